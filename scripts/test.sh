#!/usr/bin/env bash
# The one command that runs every test on a fresh Debian/Ubuntu machine:
# formatting, lints, unit and integration tests (all against local fakes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d ../shared ] || { echo "../shared (the reference material) must sit beside this checkout" >&2; exit 1; }

scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --quiet
