#!/usr/bin/env bash
# Runs the function app locally. With Azure Functions Core Tools (`func` on the PATH): Azurite
# (blob 10000, queue 10001, table 10002 on 127.0.0.1; data in .azurite/data) + `func start` in
# the repository root, which starts ./handler (a release build of this repository).
# Without Core Tools: the `standins` program of testkit runs the same handler under the host
# emulation of the end-to-end test (its own in-memory Azurite on free ports, the host's
# envelopes, redelivery, poison, timers on a schedule loop) with an HTTP front on 7071; when no
# tenant is configured it starts local stand-ins of the Microsoft services and runs a tour.
#   scripts/dev.sh              build, then func start (or the stand-in host); Ctrl-C stops all
#   scripts/dev.sh --tour-only  the stand-in host and services, the tour, then exit (CI runs it)
#   scripts/dev.sh --no-func    build and run Azurite only (e.g. to drive the handler yourself)
#   --crm dataverse|salesforce  the CRM (default dataverse): its stand-in, or CRM= with a tenant
#   HANDLER_BIN=path            the stand-in run uses that handler instead of a release build
# Safe to run again: nothing is rebuilt or reinstalled that is up to date, and an existing
# local.settings.json is never overwritten.
set -euo pipefail
cd "$(dirname "$0")/.."

want_func=true
tour_only=false
crm=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-func) want_func=false ;;
    --tour-only) tour_only=true ;;
    --crm) [ $# -ge 2 ] || { echo "--crm needs a value: dataverse or salesforce" >&2; exit 2; }
      crm=$2; shift ;;
    --crm=*) crm=${1#--crm=} ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$crm" in
  ""|dataverse|salesforce) ;;
  *) echo "unknown --crm value '$crm': use dataverse or salesforce" >&2; exit 2 ;;
esac

scripts/install-deps.sh --azurite

if [ -n "${HANDLER_BIN:-}" ] && { $tour_only || ! command -v func >/dev/null 2>&1; }; then
  # The stand-in run with an already built handler (scripts/e2e.sh: the debug or musl build).
  handler_path=$(realpath "$HANDLER_BIN")
  echo "== HANDLER_BIN=$handler_path: no release build"
else
  echo "== cargo build --release"
  cargo build --release --bin referral-connector
  # ./handler is what host.json's defaultExecutablePath names; it is gitignored.
  install -m 0755 target/release/referral-connector handler.tmp
  mv -f handler.tmp handler
  handler_path="$PWD/handler"
fi

if [ ! -f local.settings.json ]; then
  cp local.settings.json.example local.settings.json
  if [ "$crm" = salesforce ]; then
    cat <<'EOF'
== created local.settings.json from local.settings.json.example (it is gitignored). Fill in:
   PARTNER_CENTER_TENANT_ID, PARTNER_CENTER_CLIENT_ID, PARTNER_CENTER_CLIENT_SECRET (if the app
   is confidential) and PARTNER_CENTER_REFRESH_TOKEN (`./handler login --settings local.settings.json`),
   and for Salesforce CRM=salesforce, SALESFORCE_URL, SALESFORCE_CLIENT_ID, SALESFORCE_CLIENT_SECRET.
   Until PARTNER_CENTER_REFRESH_TOKEN and SALESFORCE_URL are set, the run without Core Tools uses
   local stand-ins of Partner Center, Salesforce and Entra and shows a tour.
EOF
  else
    cat <<'EOF'
== created local.settings.json from local.settings.json.example (it is gitignored). Fill in:
   PARTNER_CENTER_TENANT_ID, PARTNER_CENTER_CLIENT_ID, PARTNER_CENTER_CLIENT_SECRET (if the app
   is confidential) and PARTNER_CENTER_REFRESH_TOKEN (`./handler login --settings local.settings.json`),
   DATAVERSE_URL, AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET.
   Until PARTNER_CENTER_REFRESH_TOKEN and DATAVERSE_URL are set, the run without Core Tools uses
   local stand-ins of Partner Center, Dataverse and Entra and shows a tour.
EOF
  fi
fi

if $tour_only || { $want_func && ! command -v func >/dev/null 2>&1; }; then
  if ! $tour_only; then
    cat <<'EOF'
== Azure Functions Core Tools v4 (`func`) is not installed: running the LOCAL STAND-IN for the
   Functions host instead (the end-to-end test's host emulation). To run the real host, install
   Core Tools (Debian/Ubuntu: packages.microsoft.com's azure-functions-core-tools-4, or
   `npm i -g azure-functions-core-tools@4 --unsafe-perm true`) and run scripts/dev.sh again.
EOF
  fi
  echo "== cargo build -p testkit --bin standins (the stand-in host and services; not in the release binary)"
  cargo build -p testkit --bin standins
  args=(--handler "$handler_path" --app-root "$PWD" --handler-log "$PWD/target/standins/handler.log")
  if [ -n "$crm" ]; then
    args+=(--crm "$crm")
  fi
  if $tour_only; then
    # Always the stand-ins (the example has no tenant), on a free port (7071 may be taken).
    args+=(--tour-only --settings local.settings.json.example --port 0)
  else
    args+=(--settings local.settings.json)
  fi
  exec target/debug/standins "${args[@]}"
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

if [ "$crm" = salesforce ]; then
  # As for Dataverse: func start runs local.settings.json as it is; the stand-ins run without Core Tools.
  cat <<'EOF'
== --crm salesforce: func start runs with local.settings.json, which must set CRM=salesforce,
   SALESFORCE_URL, SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET (no Salesforce stand-in under
   Core Tools; `scripts/dev.sh --tour-only --crm salesforce` shows the tour on one).
EOF
fi
echo "== func start"
# Not exec: the EXIT trap must still stop Azurite when func ends.
func start
