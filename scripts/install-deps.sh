#!/usr/bin/env bash
# Installs what building and testing need, only when missing (safe to run again).
#   scripts/install-deps.sh          build + test prerequisites (OpenSSL headers, pkg-config)
#   scripts/install-deps.sh --musl   also the static musl build (musl-tools, perl, make, file, rustup target) and jq
#   scripts/install-deps.sh --azurite also Azurite (npm) for the local run and the end-to-end test
set -euo pipefail
cd "$(dirname "$0")/.."

want_musl=false
want_azurite=false
for arg in "$@"; do
  case "$arg" in
    --musl) want_musl=true ;;
    --azurite) want_azurite=true ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done

apt_packages=()
need_pkg() { dpkg -s "$1" >/dev/null 2>&1 || apt_packages+=("$1"); }
need_pkg pkg-config
need_pkg libssl-dev
need_pkg ca-certificates
if $want_musl; then
  need_pkg musl-tools
  need_pkg perl
  need_pkg make
  need_pkg file # scripts/package.sh checks that the binary is statically linked
  need_pkg jq   # the README's Deploy block reads local.settings.json with it
fi
if $want_azurite && ! command -v npm >/dev/null; then
  need_pkg nodejs # Azurite is pure JavaScript; Node.js 18 or 20 runs it
  need_pkg npm
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing ${apt_packages[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if $want_musl && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl
fi

if $want_azurite; then
  AZURITE_VERSION=3.35.0
  if [ ! -x .azurite/node_modules/.bin/azurite ] ||
     ! grep -q "\"version\": \"$AZURITE_VERSION\"" .azurite/node_modules/azurite/package.json 2>/dev/null; then
    mkdir -p .azurite
    npm install --prefix .azurite --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
  fi
fi
