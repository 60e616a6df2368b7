#!/usr/bin/env bash
# Reliability run: 10,000 referral events with duplicates and reorderings through the webhook,
# a host-like queue and the sync, with 20 % injected faults (429 + Retry-After, 503, timeouts,
# connection resets) on loopback fakes. Prints counts; exits non-zero on any loss or duplicate.
#   scripts/reliability.sh [--crm dataverse|salesforce] [--target lead|opportunity | --two-way] [events] [fault-rate] [seed]
# --crm salesforce: the Salesforce fake instead of the Dataverse one (two-way also starts Azurite).
# --two-way: sellers share, edit and close opportunities while Partner Center changes referrals.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=()
prev=""
for arg in "$@"; do
  [ "$prev" = "--crm" ] && [ "$arg" = "salesforce" ] && deps=(--azurite)
  prev="$arg"
done
scripts/install-deps.sh "${deps[@]}"
exec cargo run --quiet --release --example reliability -- "$@"
