#!/usr/bin/env bash
# The one command that runs every test on a fresh Debian/Ubuntu machine:
# formatting, lints, unit and integration tests (all against local fakes on 127.0.0.1), the static
# musl build and the end-to-end test through a real Azurite queue.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d ../shared ] || { echo "../shared (the reference material) must sit beside this checkout" >&2; exit 1; }

# Azurite too: the poison and status tests run against it.
scripts/install-deps.sh --azurite

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --features e2e --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --quiet
echo "== static musl build, then the end-to-end test on Azurite with the debug and the static handler"
scripts/e2e.sh
