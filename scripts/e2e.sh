#!/usr/bin/env bash
# The end-to-end test (tests/e2e.rs) against a real Azurite, twice: with the debug build of the
# handler, then with the static musl build from scripts/package.sh (HANDLER_BIN=publish/handler).
# Between them, scripts/dev.sh --tour-only (the stand-in run's tour, with the debug handler), on
# Dataverse and with --crm salesforce.
# Then the README rehearsal (tests/readme_deploy.rs), which builds the static binary from a copy.
# The system-CA-store check (unshare --mount) needs root; elsewhere set E2E_WITHOUT_CA_STORE_CHECK=1.
#   scripts/e2e.sh             both
#   scripts/e2e.sh --debug     only the debug build (no musl build)
set -euo pipefail
cd "$(dirname "$0")/.."

static=true
for arg in "$@"; do
  case "$arg" in
    --debug) static=false ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh --azurite

echo "== e2e with the debug build"
start=$(date +%s)
cargo test --features e2e --test e2e
echo "== e2e (debug build) took $(( $(date +%s) - start )) s including the build"

echo "== scripts/dev.sh --tour-only: the local run without Core Tools and without a tenant (debug handler)"
start=$(date +%s)
HANDLER_BIN="$PWD/target/debug/referral-connector" timeout 600 scripts/dev.sh --tour-only
echo "== tour took $(( $(date +%s) - start )) s"

echo "== scripts/dev.sh --tour-only --crm salesforce: the same tour on the Salesforce stand-in"
start=$(date +%s)
HANDLER_BIN="$PWD/target/debug/referral-connector" timeout 600 scripts/dev.sh --tour-only --crm salesforce
echo "== Salesforce tour took $(( $(date +%s) - start )) s"

if $static; then
  scripts/package.sh publish
  echo "== e2e with the static musl build (publish/handler)"
  start=$(date +%s)
  HANDLER_BIN="$PWD/publish/handler" cargo test --features e2e --test e2e
  echo "== e2e (static build) took $(( $(date +%s) - start )) s"

  echo "== the README's Set up and Deploy blocks, with az and func stand-ins (tests/readme_deploy.rs)"
  start=$(date +%s)
  cargo test --features e2e --test readme_deploy
  echo "== README rehearsal took $(( $(date +%s) - start )) s"
fi
