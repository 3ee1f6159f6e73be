#!/usr/bin/env bash
# Copies the contract (wit/*.wit, its one home) into the three SDK packages,
# which must each carry it to be packaged on their own: the Rust crate
# (guest-sdk/wit, read by wit-bindgen), the Python package
# (guest-sdk/python/twill/wit, read by componentize-py through
# `twill.WIT_DIR`) and the npm package (guest-sdk/js/wit, read by build.mjs).
# host/tests/wit.rs fails when a copy differs from wit/, naming this script.
set -euo pipefail
cd "$(dirname "$0")/.."
for dest in guest-sdk/wit guest-sdk/python/twill/wit guest-sdk/js/wit; do
  rm -rf "$dest"
  mkdir -p "$dest"
  cp wit/*.wit "$dest/"
  echo "== $dest: $(ls "$dest" | tr '\n' ' ')"
done
