#!/bin/sh
# Build the libFuzzer harness for native/pe_version.c and pe_imphash.c with clang + ASan + UBSan and run it.
#   fuzz/run.sh [libFuzzer options...]      e.g. fuzz/run.sh -runs=10000000 -jobs=2 -workers=2
# Defaults: 60 seconds.  Needs clang and the libFuzzer runtime that matches its version
# (Debian: clang, and libclang-rt-<major>-dev or the unversioned libclang-rt-dev).
# Seed corpus: tests/data/pe/ fixtures (+ ../shared/data/pe/ files up to 64 KiB when present).
# Any crash, leak, UBSan report or timeout makes libFuzzer exit non-zero and write the input
# as fuzz/out/crash-* (or leak-*, timeout-*).
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
CC=${CC:-clang}
out=${FUZZ_OUT:-"$here/out"}
mkdir -p "$out/corpus"
"$CC" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -fno-omit-frame-pointer -I"$root/native" \
  "$here/pe_version_fuzz.c" "$root/native/pe_version.c" "$root/native/pe_imphash.c" \
  -o "$out/pe_version_fuzz"
seeds="$out/seeds"
rm -rf "$seeds"; mkdir -p "$seeds"
for f in "$root"/tests/data/pe/*.exe "$root"/tests/data/pe/*.txt "$root"/../shared/data/pe/*.exe \
         "$root"/../shared/data/pe/*/*.exe; do
  [ -f "$f" ] || continue
  [ "$(wc -c < "$f")" -le 65536 ] && cp "$f" "$seeds/"
done
[ $# -eq 0 ] && set -- -max_total_time=60
cd "$out"
exec ./pe_version_fuzz -dict="$here/pe_version.dict" -max_len=65536 -timeout=5 \
  -rss_limit_mb=2048 -print_final_stats=1 "$@" "$out/corpus" "$seeds"
