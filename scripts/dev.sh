#!/usr/bin/env bash
# Runs the function app locally, the way Azure runs it: Azurite (blob 10000, queue 10001,
# table 10002 on 127.0.0.1; data in .azurite/data) + `func start` in the repository root, which
# starts ./handler (a release build of this repository) as the custom handler.
#   scripts/dev.sh              build, start Azurite, run `func start` (Ctrl-C stops both)
#   scripts/dev.sh --no-func    build and run Azurite only (e.g. to drive the handler yourself)
# Safe to run again: nothing is rebuilt or reinstalled that is up to date, and an existing
# local.settings.json is never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."

want_func=true
for arg in "$@"; do
  case "$arg" in
    --no-func) want_func=false ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh --azurite

echo "== cargo build --release"
cargo build --release --bin referral-connector
# ./handler is what host.json's defaultExecutablePath names; it is gitignored.
install -m 0755 target/release/referral-connector handler.tmp
mv -f handler.tmp handler

if [ ! -f local.settings.json ]; then
  cp local.settings.json.example local.settings.json
  cat <<'EOF'
== created local.settings.json from local.settings.json.example (it is gitignored). Fill in:
   PARTNER_CENTER_TENANT_ID, PARTNER_CENTER_CLIENT_ID, PARTNER_CENTER_CLIENT_SECRET (if the app
   is confidential) and PARTNER_CENTER_REFRESH_TOKEN (`./handler login --settings local.settings.json`),
   DATAVERSE_URL, AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET.
   The webhook works without them; queue messages are retried and then poisoned until they are set.
EOF
fi

if $want_func && ! command -v func >/dev/null 2>&1; then
  cat >&2 <<'EOF'
error: Azure Functions Core Tools v4 (`func`) is not installed, so the app cannot be started.
Install it, then run scripts/dev.sh again:
  Debian/Ubuntu, from Microsoft's package repository:
    curl -sSL https://packages.microsoft.com/keys/microsoft.asc | gpg --dearmor | sudo tee /usr/share/keyrings/microsoft.gpg >/dev/null
    echo "deb [arch=amd64 signed-by=/usr/share/keyrings/microsoft.gpg] https://packages.microsoft.com/debian/$(. /etc/os-release; echo "$VERSION_ID")/prod $(. /etc/os-release; echo "$VERSION_CODENAME") main" | sudo tee /etc/apt/sources.list.d/microsoft-prod.list
    sudo apt-get update && sudo apt-get install azure-functions-core-tools-4
    (on Ubuntu use https://packages.microsoft.com/ubuntu/<version>/prod)
  or with npm (downloads the CLI from Microsoft's CDN during install):
    npm i -g azure-functions-core-tools@4 --unsafe-perm true
./handler is built; `scripts/dev.sh --no-func` runs Azurite alone (Ctrl-C stops it) for manual tests.
EOF
  exit 1
fi

ports_in_use() {
  local port
  for port in 10000 10001 10002; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
    fi
  done
}
busy=$(ports_in_use)
azurite_pid=""
if [ -n "$busy" ]; then
  # Most likely an Azurite from an earlier run or another terminal: use it as it is.
  echo "== ports $(echo "$busy" | tr '\n' ' ')already answer on 127.0.0.1; assuming a running Azurite and not starting another"
else
  mkdir -p .azurite/data
  echo "== starting Azurite (data in .azurite/data, log in .azurite/azurite.log)"
  .azurite/node_modules/.bin/azurite --silent --skipApiVersionCheck --disableTelemetry \
    --location .azurite/data \
    --blobHost 127.0.0.1 --blobPort 10000 \
    --queueHost 127.0.0.1 --queuePort 10001 \
    --tableHost 127.0.0.1 --tablePort 10002 >>.azurite/azurite.log 2>&1 &
  azurite_pid=$!
  stop_azurite() {
    if [ -n "$azurite_pid" ] && kill -0 "$azurite_pid" 2>/dev/null; then
      echo "== stopping Azurite (pid $azurite_pid)"
      kill "$azurite_pid" 2>/dev/null || true
      wait "$azurite_pid" 2>/dev/null || true
    fi
  }
  trap stop_azurite EXIT
  trap 'exit 130' INT TERM
  for _ in $(seq 1 100); do
    [ "$(ports_in_use | wc -l)" -eq 3 ] && break
    kill -0 "$azurite_pid" 2>/dev/null || { echo "Azurite exited; see .azurite/azurite.log" >&2; exit 1; }
    sleep 0.1
  done
  [ "$(ports_in_use | wc -l)" -eq 3 ] || { echo "Azurite did not open ports 10000-10002 within 10 s" >&2; exit 1; }
  echo "== Azurite is listening: UseDevelopmentStorage=true works"
fi

if ! $want_func; then
  if [ -n "$azurite_pid" ]; then
    echo "== --no-func: Azurite runs until you press Ctrl-C"
    wait "$azurite_pid"
  fi
  exit 0
fi

echo "== func start"
# Not exec: the EXIT trap must still stop Azurite when func ends.
func start
