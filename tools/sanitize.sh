#!/bin/sh
# The compiled parts (matcher, ETW decoder, PE reader) under AddressSanitizer + UBSan.
#
#   tools/sanitize.sh                 build, then the tests and the hostile-input driver
#   tools/sanitize.sh --no-build      reuse the last sanitizer build
#   SANITIZE_TESTS="tests/x.py" tools/sanitize.sh   other tests (default below)
#   SANITIZE_DRIVE="--random-events 50"  arguments for tools/sanitize_drive.py
#
# It builds with SENSOR_SANITIZE=1 (setup.py: -O1 -g, -fsanitize=address,undefined) into a copy
# of the project in build/sanitize/tree, so the worktree's normal build is never touched and
# `make test` afterwards uses it. Python is not instrumented, so the sanitizer runtimes are
# preloaded; PYTHONMALLOC=malloc puts Python's own allocations (str and bytes buffers the native
# code reads) under ASan's eye too. Any ASan or UBSan report aborts the run (exit non-zero).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-"$root/.venv/bin/python"}
CC=${CC:-gcc}
out="$root/build/sanitize"
tree="$out/tree"
build=1
[ "${1:-}" = "--no-build" ] && build=0
say() { printf 'sanitize: %s\n' "$*"; }

if [ "$build" = 1 ]; then
    rm -rf "$tree"
    mkdir -p "$tree"
    (cd "$root" && tar cf - --exclude=./.venv --exclude=./build --exclude=./.git --exclude=./dist \
        --exclude=./.mutation --exclude=./fuzz/out --exclude='*.so' --exclude='*.pyd' \
        --exclude=__pycache__ --exclude=.hypothesis --exclude=.pytest_cache .) | (cd "$tree" && tar xf -)
    # tests find the research data at ../shared beside the project
    if [ -d "$root/../shared" ]; then ln -sfn "$(cd "$root/../shared" && pwd)" "$out/shared"; fi
    say "building with SENSOR_SANITIZE=1 in $tree"
    t0=$(date +%s)
    (cd "$tree" && CC="$CC" SENSOR_SANITIZE=1 "$PY" setup.py -q build_ext --inplace --force >"$out/build.log" 2>&1) \
        || { tail -n 40 "$out/build.log"; say "build failed (log: $out/build.log)"; exit 1; }
    say "built in $(( $(date +%s) - t0 )) s"
fi

cd "$tree"
for so in sensor/detect/_matcher.*.so sensor/sources/_etw_decode.*.so sensor/enrich/_pe*.so; do
    if ! [ -f "$so" ] || ! readelf -d "$so" | grep -q 'libasan'; then
        say "$so is missing or not built with ASan"
        exit 1
    fi
done

asan=$("$CC" -print-file-name=libasan.so)
ubsan=$("$CC" -print-file-name=libubsan.so)
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc PYTHONPATH="$tree" SENSOR_REQUIRE_EXTENSIONS=1 PYTHONDONTWRITEBYTECODE=1
# hypothesis: generation is slow under ASan (its too_slow health check would fail the run)
export SENSOR_HYPOTHESIS_PROFILE=sanitize
unset SENSOR_NO_EXTENSIONS || true

# The set-up must catch a read past the end of a Python bytes object in native code: the PE
# reader told the buffer is 4 KiB longer than it is, its PE header offset just past the end.
canary='from sensor.enrich import _pe
d = bytearray(64); d[0:2] = b"MZ"; d[0x3C] = 64; d = bytes(d)
r, blob = _pe.ffi.new("pev_result *"), _pe.ffi.new("uint8_t[]", 65536)
_pe.lib.pev_parse_buffer(_pe.ffi.from_buffer(d), len(d) + 4096, r, blob)'
if "$PY" -c "$canary" >"$out/canary.log" 2>&1 || ! grep -q 'heap-buffer-overflow' "$out/canary.log"; then
    say "the sanitizers did not catch a planted overflow (log: $out/canary.log); nothing below would be checked"
    exit 1
fi
say "a planted overflow is caught (heap-buffer-overflow)"

tests=${SANITIZE_TESTS:-"tests/test_matcher_parity.py tests/test_matcher.py tests/test_regex.py
    tests/test_etw_decode.py tests/test_etw_decode_native.py tests/test_capture.py
    tests/test_pe.py tests/test_pe_property.py tests/test_imphash.py tests/test_faults_pe.py"}
t0=$(date +%s)
# shellcheck disable=SC2086
"$PY" -m pytest -q -p no:cacheprovider -m '' $tests
say "tests under the sanitizers: $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
# shellcheck disable=SC2086
"$PY" tools/sanitize_drive.py ${SANITIZE_DRIVE:-}
say "hostile-input driver under the sanitizers: $(( $(date +%s) - t0 )) s"
