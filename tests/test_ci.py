"""``.ci/run`` installs by capability: driven here with a fake apt-get and a fake clang.

The script runs with a PATH that holds only fakes and the few real tools it needs, so what
it decides depends on the fakes alone, never on what this machine has installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "run"
REAL_TOOLS = ("bash", "env", "dirname", "sed", "head", "mktemp", "rm", "cat", "touch", "ln", "python3")
MINGW = ("x86_64-w64-mingw32-gcc", "i686-w64-mingw32-gcc")

# apt-get: logs every call; refuses the packages listed in $FAKE_REFUSE (shell globs) and,
# with $FAKE_UPDATE_FAILS, the update; an installed package leaves a marker in $FAKE_STATE and
# puts the commands $FAKE_PROVIDES names ("package:command ...") on PATH.
FAKE_APT = r"""#!/bin/sh
set -f
echo "apt-get $*" >> "$FAKE_STATE/log"
[ "$1" = update ] && { [ -n "$FAKE_UPDATE_FAILS" ] && exit 100; exit 0; }
for pkg in "$@"; do case "$pkg" in -*|install) continue;; esac; last=$pkg; done
for pat in $FAKE_REFUSE; do
  case "$last" in $pat) echo "E: Unable to locate package $last" >&2; exit 100;; esac
done
touch "$FAKE_STATE/$last"
for pair in $FAKE_PROVIDES; do
  if [ "$last" = "${pair%%:*}" ]; then ln -sf "$FAKE_STATE/../fakes/${pair#*:}" "$FAKE_BIN/${pair#*:}"; fi
done
exit 0
"""

# clang: reports $FAKE_CLANG_MAJOR; links libFuzzer only once a runtime package is installed.
FAKE_CLANG = r"""#!/bin/sh
if [ "$1" = --version ]; then echo "Debian clang version $FAKE_CLANG_MAJOR.0.7 (6)"; exit 0; fi
for rt in "$FAKE_STATE"/libclang-rt-*; do [ -e "$rt" ] && exit 0; done
echo "/usr/bin/ld: cannot find libclang_rt.fuzzer-x86_64.a" >&2
exit 1
"""


def _fake_env(tmp_path: Path, *, clang_major: str | None, refuse: str, update_fails: bool = False,
              have_make: bool = True, test_cmd: str = "echo TESTS-RAN") -> dict:
    state = tmp_path / "state"
    fakes = tmp_path / "fakes"
    bin_ = tmp_path / "bin"
    for d in (state, fakes, bin_):
        d.mkdir()
    for tool in REAL_TOOLS:
        # the interpreter itself, not a version-manager shim that needs its own PATH
        real = sys.executable if tool == "python3" else shutil.which(tool)
        assert real, f"{tool} is needed to drive the script"
        (bin_ / tool).symlink_to(real)

    def fake(name: str, text: str, where: Path = bin_) -> None:
        p = where / name
        p.write_text(text)
        p.chmod(0o755)

    fake("apt-get", FAKE_APT)
    fake("id", "#!/bin/sh\necho 0\n")
    fake("cc", "#!/bin/sh\nexit 0\n")
    if have_make:
        fake("make", "#!/bin/sh\nexit 0\n")
    fake("clang", FAKE_CLANG, fakes)
    if clang_major is not None:
        (bin_ / "clang").symlink_to(fakes / "clang")
    for tool in MINGW + ("wine64", "wine", "rsyslogd", "lmnsd_gtls.so"):
        fake(tool, "#!/bin/sh\nexit 0\n", fakes)
    return {
        "PATH": str(bin_), "HOME": str(tmp_path), "FAKE_STATE": str(state), "FAKE_BIN": str(bin_),
        "FAKE_REFUSE": refuse, "FAKE_UPDATE_FAILS": "1" if update_fails else "",
        "FAKE_CLANG_MAJOR": clang_major or "19", "CI_TEST_CMD": test_cmd,
        "FAKE_PROVIDES": "clang:clang gcc-mingw-w64-x86-64-win32:x86_64-w64-mingw32-gcc "
                         "gcc-mingw-w64-i686-win32:i686-w64-mingw32-gcc wine64:wine64 wine:wine "
                         "rsyslog:rsyslogd rsyslog-gnutls:lmnsd_gtls.so",
        "CI_WINE_DIRS": str(tmp_path / "no-wine-here"),
        # rsyslog's GnuTLS driver is looked for where the fake package puts it
        "CI_RSYSLOG_DIRS": str(bin_), "CI_SBIN": str(tmp_path / "no-sbin-here"),
    }


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def _installs(env: dict) -> list[str]:
    log = Path(env["FAKE_STATE"]) / "log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [ln.split()[-1] for ln in lines if " install " in ln]


def test_versioned_runtime_refused_unversioned_chosen(tmp_path):
    # Debian 13: clang 19 is installed, there is no libclang-rt-14-dev (nor a versioned
    # package at all here); the unversioned runtime that follows the default clang is taken.
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-*-dev gcc-mingw-w64-*")
    res = _run(env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _installs(env)[:2] == ["libclang-rt-19-dev", "libclang-rt-dev"]
    assert "libclang-rt-14-dev" not in _installs(env)
    assert "installed libclang-rt-dev (optional: libFuzzer runtime for clang 19)" in res.stdout
    # mingw cannot be had: both package names tried, a reason printed, and the tests still ran
    assert "gcc-mingw-w64-x86-64-win32" in _installs(env) and "gcc-mingw-w64-x86-64" in _installs(env)
    assert "skip: mingw-w64 not installable" in res.stdout
    assert res.stdout.rstrip().endswith("TESTS-RAN")


def test_runtime_matching_clang_major_preferred(tmp_path):
    env = _fake_env(tmp_path, clang_major="14", refuse="")
    res = _run(env, "--install-only")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "libclang-rt-14-dev" in _installs(env)
    assert "libclang-rt-dev" not in _installs(env)
    assert "TESTS-RAN" not in res.stdout  # --install-only stops before the tests


def test_nothing_installable_skips_with_reasons_and_tests_run(tmp_path):
    env = _fake_env(tmp_path, clang_major=None, refuse="*", update_fails=True)
    res = _run(env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "apt-get update failed" in res.stdout
    assert "skip: clang not installable; the short fuzz run will skip" in res.stdout
    assert "skip: mingw-w64 not installable" in res.stdout
    assert res.stdout.rstrip().endswith("TESTS-RAN")


def test_clang_installed_then_runtime_found(tmp_path):
    # no clang at first: the script installs the unversioned clang, reads its major version,
    # then finds the runtime for that version
    env = _fake_env(tmp_path, clang_major=None, refuse="gcc-mingw-w64-*")
    env["FAKE_CLANG_MAJOR"] = "16"
    res = _run(env, "--install-only")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _installs(env)[:2] == ["clang", "libclang-rt-16-dev"]


def test_missing_requirement_fails(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="make", have_make=False)
    res = _run(env)
    assert res.returncode == 1
    assert "REQUIRED: make is missing and could not be installed" in res.stdout
    assert "TESTS-RAN" not in res.stdout


def test_ci_test_command_failure_fails_ci(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="", test_cmd="false")
    assert _run(env).returncode != 0


@pytest.mark.skipif(not os.path.exists("/etc/debian_version"), reason="not a Debian machine")
def test_script_names_no_versioned_package():
    # the capability logic, not a package pinned to one Debian release, picks the runtime
    text = SCRIPT.read_text()
    assert "libclang-rt-14" not in text


def test_missing_native_build_fails_the_run_when_required():
    # SENSOR_NO_EXTENSIONS=1 stands in for a broken build: with the CI guard on, pytest refuses
    # to run (the parity tests would otherwise skip and CI would go green without them)
    env = dict(os.environ, SENSOR_NO_EXTENSIONS="1", SENSOR_REQUIRE_EXTENSIONS="1")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_queues.py")], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0
    assert "did not build" in res.stdout + res.stderr
    env.pop("SENSOR_REQUIRE_EXTENSIONS")
    assert subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_queues.py")], env=env, capture_output=True,
                          timeout=300, cwd=ROOT).returncode == 0


def test_parity_tests_skip_with_the_reason_when_the_native_build_is_missing():
    # without the CI guard a missing build is a reason to skip, named in the report; never a
    # collection error (one would turn every run without a compiler red)
    env = dict(os.environ, SENSOR_NO_EXTENSIONS="1")
    env.pop("SENSOR_REQUIRE_EXTENSIONS", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_matcher_parity.py"),
                          str(ROOT / "tests" / "test_etw_decode_native.py")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "compiled matcher not built" in out
    # the built decoder module is still compared with its twin; only its use is switched off
    assert "the compiled ETW decoder is switched off" in out
    assert "error" not in out.lower()


def test_wine_installed_when_mingw_is_there(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-*")
    res = _run(env, "--install-only")
    assert res.returncode == 0, res.stdout + res.stderr
    installs = _installs(env)
    assert installs.index("gcc-mingw-w64-x86-64-win32") < installs.index("wine64")
    assert "gcc-mingw-w64-i686-win32" in installs
    assert "installed wine64 (optional: runs the PE reader's Windows file layer)" in res.stdout


def test_wine_in_debians_private_folder_counts_as_present(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-*")
    lib = tmp_path / "lib-wine"
    lib.mkdir()
    (lib / "wine64").symlink_to(tmp_path / "fakes" / "wine64")
    env["CI_WINE_DIRS"] = str(lib)
    res = _run(env, "--install-only")
    assert f"Wine: present ({lib}/wine64)" in res.stdout and "wine64" not in _installs(env)


def test_wine_not_installable_skips_with_a_reason(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-* wine*")
    res = _run(env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "wine64" in _installs(env) and "wine" in _installs(env)
    assert "skip: Wine not installable (tried wine64, wine); the Wine file-layer tests will skip" in res.stdout
    assert res.stdout.rstrip().endswith("TESTS-RAN")


def test_no_wine_without_mingw(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-* gcc-mingw-w64-*")
    res = _run(env, "--install-only")
    assert "skip: Wine is of no use without mingw-w64" in res.stdout
    assert not any(p.startswith("wine") for p in _installs(env))


def test_rsyslog_and_its_tls_driver_installed_for_the_syslog_tests(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-*")
    res = _run(env, "--install-only")
    assert res.returncode == 0, res.stdout + res.stderr
    installs = _installs(env)
    assert installs.index("rsyslog") < installs.index("rsyslog-gnutls")
    assert "installed rsyslog, rsyslog-gnutls (optional: the syslog output against a real collector)" in res.stdout


def test_rsyslog_without_its_tls_driver_skips_with_a_reason(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-* rsyslog-gnutls")
    res = _run(env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "rsyslog-gnutls" in _installs(env)
    assert "skip: rsyslog or rsyslog-gnutls not installable; the rsyslog tests will skip" in res.stdout
    assert res.stdout.rstrip().endswith("TESTS-RAN")


def test_rsyslog_present_installs_nothing(tmp_path):
    env = _fake_env(tmp_path, clang_major="19", refuse="libclang-rt-*")
    (Path(env["FAKE_BIN"]) / "rsyslogd").symlink_to(tmp_path / "fakes" / "rsyslogd")
    (Path(env["FAKE_BIN"]) / "lmnsd_gtls.so").symlink_to(tmp_path / "fakes" / "lmnsd_gtls.so")
    res = _run(env, "--install-only")
    assert "rsyslog with its GnuTLS driver: present" in res.stdout
    assert "rsyslog" not in _installs(env) and "rsyslog-gnutls" not in _installs(env)
