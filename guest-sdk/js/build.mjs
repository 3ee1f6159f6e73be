#!/usr/bin/env node
// Builds a Twill guest written in JavaScript into a WebAssembly component
// with ComponentizeJS (its JS API: `jco componentize` is not needed).
//
//   node guest-sdk/js/build.mjs GUEST.js [-o OUT.wasm] [--wit DIR] [--world peer]
//
// Defaults: OUT = GUEST with .wasm, --wit = the package's own wit/ (a copy
// of the Twill repository's, made by scripts/sync-wit.sh),
// --world = peer (a guest exporting both factories; `server` or `client`
// when it exports one). Install the tool first: `npm ci` in guest-sdk/js.
//
// ComponentizeJS maps one directory into the component as `/` while it
// evaluates the guest (Wizer pre-initialisation), and relative imports are
// resolved inside it. This script runs it from the deepest directory that
// holds both the guest and this SDK, so `import ... from '.../twill.js'`
// works from anywhere in the tree.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
let source = null;
let out = null;
let wit = resolve(here, 'wit');
let world = 'peer';
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '-o' || a === '--out') out = args[++i];
  else if (a === '--wit') wit = args[++i];
  else if (a === '--world') world = args[++i];
  else if (a === '-h' || a === '--help') {
    console.log('usage: node build.mjs GUEST.js [-o OUT.wasm] [--wit DIR] [--world peer|server|client]');
    process.exit(0);
  } else if (!source) source = a;
  else {
    console.error(`unexpected argument ${a}`);
    process.exit(2);
  }
}
if (!source) {
  console.error('usage: node build.mjs GUEST.js [-o OUT.wasm] [--wit DIR] [--world peer|server|client]');
  process.exit(2);
}
source = resolve(source);
out = resolve(out ?? source.replace(/\.m?js$/, '') + '.wasm');
wit = resolve(wit);

function commonDir(a, b) {
  const pa = a.split(sep);
  const pb = b.split(sep);
  let n = 0;
  while (n < pa.length && n < pb.length && pa[n] === pb[n]) n++;
  return pa.slice(0, n).join(sep) || sep;
}
process.chdir(commonDir(dirname(source), here));

const t0 = Date.now();
let component;
try {
  ({ component } = await componentize({
    sourcePath: source,
    witPath: wit,
    worldName: world,
    // No fetch() and no incoming HTTP: the host links neither.
    disableFeatures: ['http', 'fetch-event'],
  }));
} catch (e) {
  const missing = /does not export a "([\w-]+)" interface/.exec(String(e?.message ?? e));
  if (!missing) throw e;
  console.error(`${source}: ${e.message}`);
  console.error(
    `hint: export every name serve() returns: ` +
      `export const { protocol, batch, serverFactory, clientFactory, reactorCalls, outboundFactory, halfClose } = serve({ server, client });`,
  );
  process.exit(1);
}
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
