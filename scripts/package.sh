#!/usr/bin/env bash
# Builds the static x86_64-unknown-linux-musl release binary and assembles the folder that
# `func azure functionapp publish` (or a zip deploy) ships:
#   OUT_DIR/host.json, OUT_DIR/<Function>/function.json for each function folder,
#   OUT_DIR/handler (mode 0755), OUT_DIR/.funcignore
# Usage: scripts/package.sh [OUT_DIR]     (default: publish/). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

out_dir="${1:-publish}"
target=x86_64-unknown-linux-musl

scripts/install-deps.sh --musl

# The vendored OpenSSL (openssl-sys `vendored`, enabled for musl in Cargo.toml) is built from
# source with musl-gcc and linked statically; never pick up the system's glibc libssl.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
export OPENSSL_STATIC=1
unset OPENSSL_DIR OPENSSL_LIB_DIR OPENSSL_INCLUDE_DIR OPENSSL_NO_VENDOR || true

start=$(date +%s)
cargo build --locked --release --target "$target" --bin referral-connector
echo "cargo build (release, $target) took $(( $(date +%s) - start )) s"

binary="${CARGO_TARGET_DIR:-target}/$target/release/referral-connector"
[ -f "$binary" ] || { echo "build produced no $binary" >&2; exit 1; }

# Must be a static executable: the Linux host images differ in glibc and libssl versions.
file_out=$(file -b "$binary")
echo "file: $file_out"
case "$file_out" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) echo "error: $binary is not statically linked" >&2; exit 1 ;;
esac
if ldd "$binary" >/dev/null 2>&1 && ! ldd "$binary" 2>&1 | grep -qE "not a dynamic executable|statically linked"; then
  echo "error: ldd lists shared libraries for $binary:" >&2
  ldd "$binary" >&2
  exit 1
fi
if readelf -d "$binary" 2>/dev/null | grep -q NEEDED; then
  echo "error: $binary has NEEDED entries:" >&2
  readelf -d "$binary" | grep NEEDED >&2
  exit 1
fi

mkdir -p "$out_dir"
install -m 0644 host.json "$out_dir/host.json"
for function in ReferralWebhook ReferralSync ReferralReconcile CrmChanges; do
  mkdir -p "$out_dir/$function"
  install -m 0644 "$function/function.json" "$out_dir/$function/function.json"
done
install -m 0644 .funcignore "$out_dir/.funcignore"
# Replace atomically so a running copy is never half-written.
install -m 0755 "$binary" "$out_dir/handler.tmp"
mv -f "$out_dir/handler.tmp" "$out_dir/handler"

# Smoke test: the packaged binary runs on this machine.
"$out_dir/handler" --version >/dev/null 2>&1 || "$out_dir/handler" --help >/dev/null 2>&1 || {
  echo "error: $out_dir/handler does not run" >&2; exit 1; }

size=$(stat -c %s "$out_dir/handler")
echo "handler: $(realpath "$out_dir/handler") ($size bytes, $(( size / 1024 / 1024 )) MiB)"
echo "publish folder: $(realpath "$out_dir")"
echo "publish it with: (cd $out_dir && func azure functionapp publish <app> --custom)   # README, Deploy"
