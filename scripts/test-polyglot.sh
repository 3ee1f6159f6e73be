#!/usr/bin/env bash
# Runs the echo integration suite against the Python and JavaScript echo
# guests: the same tests that check guest-echo (the Rust echo), pointed at
# another component with TWILL_ECHO_WASM; the proxy tests against their
# port forwarders (TWILL_FORWARD_WASM), as against guests/portforward; and
# the STARTTLS tests against their starttls guests (TWILL_STARTTLS_WASM), as
# against guests/starttls.
#
#   scripts/test-polyglot.sh            # build both, then test both
#   scripts/test-polyglot.sh python     # or: js
#
# What runs, per language:
# - the SDK's own unit tests (CPython unittest / node --test, no wasm);
# - tests/component.rs, all of it: echo integrity under every chunking (every
#   chunk size of a 97-byte payload, every split of a 12-byte one), empty and
#   1 MiB chunks, 32 MiB through one instance, the seed client's output and
#   lose-connection, the failed-connection goodbye, and the exported world;
# - tests/sockets.rs, the echo tests: random chunkings up to 2 MB over real
#   sockets (the server flushes and closes after the client's FIN), 200
#   concurrent clients, shutdown flushing open connections;
# - tests/cli.rs, the echo tests: the seed client (this component) against a
#   twill listener (this component) and exiting 0, against a closed port and
#   an unresolvable name, SIGTERM with open connections, port-in-use and
#   bad-interface errors;
# - tests/shared.rs, the echo tests: 100 concurrent clients under random
#   chunkings on shared instances (instance = "shared"), where one instance
#   holds many protocol resources at once; 100 connections one after
#   another on an instance with max-resources = 16 (each ended connection's
#   handle must be dropped); and from tests/cli.rs, both halves of the seed
#   (client and server) on one shared instance;
# - tests/timers.rs, with the clock guest (TWILL_CLOCK_WASM): delayed calls
#   firing on time over real sockets, in both instance modes; a looping call
#   making 100 delayed calls on an instance with max-resources = 16;
# - tests/proxy.rs, with the port forwarder (guests/python-forward,
#   guests/js-forward; TWILL_FORWARD_WASM), relaying and spliced: echo
#   through it under every chunking with the FIN passed on, a half-close
#   both ways, a backend flooding a client that does not read (flow control,
#   nothing lost, no fault), the connect grants (refused, allowed by
#   address, counted), a closed port and a black-holed backend (TIMEOUT),
#   no grants at all, shutdown flushing both legs, and an upstream reset
#   reaching the client as a reset;
# - tests/tls.rs, the tests named starttls_*, with the STARTTLS line
#   protocol (guests/python-starttls, guests/js-starttls;
#   TWILL_STARTTLS_WASM): a plaintext connection upgraded by STARTTLS (the
#   reply in plaintext, then the handshake, the INFO line with what it
#   negotiated, a second STARTTLS refused, QUIT with close_notify), the same
#   on a shared instance with 8 clients, and a failed handshake ending only
#   its connection; and tests/tls_peers.rs, its starttls_* test: the client
#   half, start-tls on a [[connect]] against a server that upgrades.
#
# Environment for the tests: TWILL_TEST_MEMORY is the plugin memory limit the
# echo, clock, forward and starttls tests use: by default the one docs/guide-*.md
# recommend, 64MiB for Python and 256MiB for JavaScript (what a shared
# instance needs; an instance per connection does with 96MiB)
# (bench/results/polyglot.md says why); set it to override both.
# TWILL_ECHO_IMPORTS_SOCKETS is set for Python only: its component imports
# wasi:sockets (componentize-py's libc links them), which the world check
# otherwise rejects; the host grants no network either way.
#
# Compile cache: a component is compiled once per engine configuration and
# cached in ~/.cache/wasmtime. The debug-built test binaries compile a 12-18
# MB component slowly (about 3 minutes), so this script first loads every
# component with `twill check`: with the release binary if one is built
# (seconds), then with the debug one, which hits that cache entry; the tests
# then hit it too. Without a release binary the debug one compiles each
# component once (about 4.5 minutes for the whole run instead of 1.5).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/twill-target}
OUT=${TWILL_POLYGLOT_OUT:-$CARGO_TARGET_DIR/polyglot}
export TWILL_POLYGLOT_OUT=$OUT
# The plugin memory limit per language (see the header).
USER_MEMORY=${TWILL_TEST_MEMORY:-}
memory_for() {
  if [[ -n $USER_MEMORY ]]; then echo "$USER_MEMORY"; return; fi
  case $1 in python) echo 64MiB ;; js) echo 256MiB ;; esac
}
WHICH=${1:-all}
case $WHICH in
  all) LANGS=(python js) ;;
  python | js) LANGS=("$WHICH") ;;
  *) echo "usage: $0 [all|python|js]" >&2; exit 2 ;;
esac
T0=$SECONDS
step() { printf '\n=== %s (%s, +%ss)\n' "$*" "$(date +%T)" "$((SECONDS - T0))"; }

step "build the polyglot guests"
for lang in "${LANGS[@]}"; do scripts/build-polyglot-guests.sh "$lang"; done

step "SDK unit tests"
for lang in "${LANGS[@]}"; do
  case $lang in
    python) python3 -m unittest discover -s guest-sdk/python/tests ;;
    js) node --import ./guest-sdk/js/test/register.mjs --test --test-reporter=spec guest-sdk/js/test/ ;;
  esac
done

step "build the test binaries"
cargo test -p twill --no-run --quiet

step "warm the compile cache"
# One config per language: the engine's settings (and so the cache key)
# follow the largest memory limit in a config. The release binary (if any)
# compiles in seconds; the debug binary, built with the tests and so always
# configured exactly as they are, then finds the entry (or, if the release
# binary is stale or absent, compiles once, slowly, before the tests could
# all compile at once).
warm=$(mktemp -d)
for lang in "${LANGS[@]}"; do
  {
    for guest in echo clock forward starttls; do
      printf '[plugins.%s%s]\ncomponent = "%s/%s-%s.wasm"\nmemory = "%s"\n\n' \
        "$lang" "${guest/#echo/}" "$OUT" "$lang" "$guest" "$(memory_for "$lang")"
    done
    printf '[[listen]]\nport = 0\nplugin = "%s"\n' "$lang"
  } >"$warm/$lang.toml"
done
bins=()
[[ -n ${TWILL_WARM_BIN:-} ]] && bins+=("$TWILL_WARM_BIN")
[[ -z ${TWILL_WARM_BIN:-} && -x $CARGO_TARGET_DIR/release/twill ]] && bins+=("$CARGO_TARGET_DIR/release/twill")
bins+=("$CARGO_TARGET_DIR/debug/twill")
for twill in "${bins[@]}"; do
  t=$SECONDS
  pids=()
  for lang in "${LANGS[@]}"; do
    "$twill" check "$warm/$lang.toml" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  echo "   $twill check: $((SECONDS - t)) s"
done
rm -rf "$warm"

SOCKET_TESTS=(echo_is_byte_exact_under_random_chunkings two_hundred_concurrent_clients shutdown_flushes_and_closes_open_connections)
CLI_TESTS=(the_seed_client_talks_to_a_twill_listener_and_exits_0 the_seed_client_against_a_closed_port_says_goodbye_and_exits_0
  an_unresolvable_name_fails_the_connection sigterm_closes_open_connections_cleanly_and_exits_0
  port_in_use_is_a_clear_error_and_exit_2 an_interface_with_no_such_address_is_exit_2)
SHARED_TESTS=(shared_echo_is_byte_exact_for_concurrent_clients_under_random_chunkings reads_that_arrive_together_are_delivered_in_batches connection_churn_on_a_shared_instance_outlives_max_resources)
CLI_TESTS+=(both_halves_of_the_seed_on_one_shared_instance)
PROXY_TESTS=(relay_and_splice_echo_every_chunking_and_pass_the_fin_on a_half_close_goes_through_the_proxy_both_ways
  a_client_that_does_not_read_while_the_backend_floods_loses_nothing grants_refuse_what_they_do_not_cover_and_count_it
  a_closed_port_and_a_black_hole_fail_through_the_factory without_grants_a_guest_cannot_connect
  shutdown_flushes_proxied_connections_on_both_legs an_upstream_reset_reaches_the_client_as_a_reset)

# The starttls tests, by name prefix (a filter, not --exact): each suite
# and the number of tests it must run, so that a renamed or removed test
# does not drop out unnoticed.
STARTTLS_SUITES=(tls:7 tls_peers:3)

passed=0
failed=0
summary=()
# run LANG SUITE [TEST-NAME...]: one integration test file, all of it or the
# named tests only. With FILTER set (run_filtered), the tests whose names
# contain it, of which EXPECT must run.
run() {
  local lang=$1 suite=$2
  shift 2
  local t=$SECONDS log status p f
  log=$(mktemp)
  set +e
  if [[ -n ${FILTER:-} ]]; then
    cargo test -p twill --test "$suite" -- "$FILTER" >"$log" 2>&1
  elif [[ $# -gt 0 ]]; then
    cargo test -p twill --test "$suite" -- --exact "$@" >"$log" 2>&1
  else
    cargo test -p twill --test "$suite" >"$log" 2>&1
  fi
  status=$?
  set -e
  grep -E '^(test |test result|failures:)' "$log" | sed 's/^/   /' || true
  p=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed.*/\1/p' "$log" | tail -1)
  f=$(sed -n 's/^test result: .* \([0-9][0-9]*\) failed.*/\1/p' "$log" | tail -1)
  if [[ $status -ne 0 ]]; then
    echo "   cargo test --test $suite exited $status; its output:"
    grep -E -A40 '^---- |^error' "$log" | head -120 | sed 's/^/   | /' || true
    [[ ${f:-0} -gt 0 ]] || f=1
  elif [[ -n ${FILTER:-} && ${p:-0} -ne ${EXPECT:-0} ]]; then
    echo "   expected ${EXPECT:-0} tests matching $FILTER in $suite to run, ${p:-0} did"
    f=$((${EXPECT:-0} > ${p:-0} ? ${EXPECT:-0} - ${p:-0} : 1))
  elif [[ $# -gt 0 && ${p:-0} -ne $# ]]; then
    # A renamed test would otherwise drop out of this run unnoticed.
    echo "   expected $# tests in $suite to run, $p did: $*"
    f=$(($# - ${p:-0}))
  fi
  rm -f "$log"
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  summary+=("$lang $suite${FILTER:+ $FILTER*}: ${p:-0} passed, ${f:-0} failed, $((SECONDS - t)) s")
}

# run_filtered LANG SUITE FILTER EXPECT: the tests of SUITE whose names
# contain FILTER; EXPECT of them must run.
run_filtered() {
  FILTER=$3 EXPECT=$4 run "$1" "$2"
}

for lang in "${LANGS[@]}"; do
  step "$lang echo: integration tests"
  export TWILL_ECHO_WASM=$OUT/$lang-echo.wasm
  export TWILL_TEST_MEMORY
  TWILL_TEST_MEMORY=$(memory_for "$lang")
  if [[ $lang == python ]]; then export TWILL_ECHO_IMPORTS_SOCKETS=1; else unset TWILL_ECHO_IMPORTS_SOCKETS; fi
  run "$lang" component
  run "$lang" sockets "${SOCKET_TESTS[@]}"
  run "$lang" cli "${CLI_TESTS[@]}"
  run "$lang" shared "${SHARED_TESTS[@]}"
  step "$lang clock: reactor time over real sockets"
  TWILL_CLOCK_WASM=$OUT/$lang-clock.wasm run "$lang" timers delayed_calls_fire_on_time_over_real_sockets_in_both_modes a_looping_call_on_a_shared_instance_outlives_max_resources
  step "$lang forward: proxying over real sockets"
  TWILL_FORWARD_WASM=$OUT/$lang-forward.wasm run "$lang" proxy "${PROXY_TESTS[@]}"
  step "$lang starttls: STARTTLS over real sockets"
  for entry in "${STARTTLS_SUITES[@]}"; do
    TWILL_STARTTLS_WASM=$OUT/$lang-starttls.wasm run_filtered "$lang" "${entry%%:*}" starttls_ "${entry#*:}"
  done
done

step "soak (issue 21): shared instances under mixed load, memory flat; 1 GiB on one connection"
# bench/soak.py's pass criteria, shortened: 30 s of 100 x 64 B ping-pong and
# 10 x 16 KiB bulk per language with 0 traps, 0 broken connections and the
# guest's linear memory flat after the warm-up; then 1 GiB echoed on one
# per-connection instance. (bench/soak.sh runs the 10-minute version.)
cargo build --release --quiet -p twill -p twill-bench --bin twill --bin loadgen
langs_csv=$(IFS=,; echo "${LANGS[*]}")
if python3 bench/soak.py --langs "$langs_csv" --duration 30 --sample 3 --gib 1; then
  summary+=("soak ($langs_csv): passed")
else
  summary+=("soak ($langs_csv): FAILED")
  failed=1
fi

step "summary"
printf '  %s\n' "${summary[@]}"
echo "polyglot: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
