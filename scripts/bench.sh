#!/usr/bin/env bash
# Every benchmark, each figure printed next to its reference measured in the same run:
# webhook throughput vs raw RSA-2048 verify, requests and syncs per second vs raw round trips,
# start-up time and resident memory (of the static build too, when publish/handler exists).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo bench --quiet --bench webhook
cargo bench --quiet --bench sync
cargo bench --quiet --bench process
if [ -x publish/handler ]; then
  HANDLER_BIN="$PWD/publish/handler" cargo bench --quiet --bench process
fi
