#!/bin/sh
# Rebuild the PE fixtures in this folder from src/ (our own sources; no third-party bytes).
# Needs: binutils-mingw-w64-x86-64 and binutils-mingw-w64-i686 (windres, as, ld), a C
# preprocessor (cpp), python3 with pefile (patch.py locates offsets with it).
# The outputs are committed; run this only to change them.
set -e
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=${PYTHON:-python3}

# link <triplet> <out.exe> <rc file or -> : start.s (+ the compiled resources)
link() {
  t=$1; out=$2; rc=$3
  "$t-as" src/start.s -o "$tmp/start.o"
  if [ "$rc" = "-" ]; then
    "$t-ld" --no-insert-timestamp --subsystem console -e start -o "$out" "$tmp/start.o"
    return
  fi
  # windres resolves data files relative to the working directory: run it beside the .rc.
  (cd "$(dirname "$rc")" && "$t-windres" --preprocessor=cpp "$(basename "$rc")" -O coff -o "$tmp/res.o")
  "$t-ld" --no-insert-timestamp --subsystem console -e start -o "$out" "$tmp/start.o" "$tmp/res.o"
}

link x86_64-w64-mingw32 basic64.exe src/basic.rc
link i686-w64-mingw32 basic32.exe src/basic.rc        # PE32
link x86_64-w64-mingw32 no_resources.exe -
for rc in src/*.rc; do
  name=$(basename "$rc" .rc)
  [ "$name" = basic ] && continue
  link x86_64-w64-mingw32 "$name.exe" "$rc"
done
"$PY" src/gen_blobs.py src/blobs
for rc in src/blobs/*.rc; do
  link x86_64-w64-mingw32 "blob_$(basename "$rc" .rc).exe" "$rc"
done
"$PY" src/patch.py .
echo "built $(ls *.exe | wc -l) fixtures"
