// Node module hooks for the SDK's unit tests: the WIT imports that
// ComponentizeJS provides inside a component (`twill:protocol/...`) resolve
// to the fakes in this directory. Loaded with `node --import
// ./guest-sdk/js/test/register.mjs`.
export async function resolve(specifier, context, next) {
  if (specifier.startsWith('twill:protocol/reactor')) {
    return { url: new URL('./fake-reactor.mjs', import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
