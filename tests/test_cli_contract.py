"""The CLI and the README agree, and no command shows a user a traceback.

- every usage line of the README's "Command line" block runs with ``--help``, and every option it
  names is in that command's help;
- every ``etw-sensor ...`` example in the README's code blocks parses;
- every command, given bad arguments, bad files, an unwritable output, a full disk (/dev/full) or
  a reader that goes away (``| head -1``), exits 1 or 2 with one line, never a traceback.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MOF = {"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe", "ParentImage": "C:\\Windows\\System32\\cmd.exe",
       "CommandLine": "mofcomp a.mof"}


def usage_lines() -> list[str]:
    block = README.split("## Command line", 1)[1].split("```", 2)[1]
    return [ln.strip() for ln in block.splitlines() if ln.strip().startswith("etw-sensor ")]


def command_words(line: str) -> list[list[str]]:
    """The sub-command paths a usage line names (alternatives a|b|c expanded)."""
    words = []
    for tok in line.split()[1:]:
        if not re.fullmatch(r"[a-z][a-z-]*(\|[a-z][a-z-]*)*", tok):
            break
        words.append(tok.split("|"))
    paths = [[]]
    for alts in words:
        paths = [p + [a] for p in paths for a in alts]
    return paths


def test_the_usage_block_covers_every_command():
    named = {command_words(ln)[0][0] for ln in usage_lines()}
    assert named == set(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("line", usage_lines())
def test_each_usage_line_runs_with_help(line, capsys):
    options = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line.split(" ", 1)[1]))
    for path in command_words(line):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(path + ["--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: etw-sensor " + " ".join(path[:1]))
        for opt in options:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", out), \
                f"`{' '.join(path)} --help` does not know {opt} (README: {line})"
        assert main(path + ["--help"]) == 0                 # and through main(), no traceback
        capsys.readouterr()


def readme_examples() -> list[str]:
    """``etw-sensor ...`` lines in the README's code blocks, other than the usage lines."""
    out, inside = [], False
    for ln in README.splitlines():
        if ln.startswith("```"):
            inside = not inside
            continue
        ln = ln.strip()
        if inside and ln.startswith("etw-sensor ") and "[" not in ln and "..." not in ln \
                and "|" not in ln.split("#")[0]:
            out.append(ln)
    return out


def test_readme_examples_are_found():
    assert len(readme_examples()) >= 7


@pytest.mark.parametrize("line", readme_examples())
def test_every_readme_example_parses(line):
    cmd = re.split(r"\s+#\s", line)[0]
    cmd = cmd.split(" > ")[0]
    argv = shlex.split(cmd)[1:]
    build_parser().parse_args(argv)      # raises SystemExit(2) if the CLI does not take it


# -- no traceback, ever ----------------------------------------------------------------------

def run(args, cwd, stdin=None, stdout=subprocess.PIPE, env=None):
    return subprocess.run([sys.executable, "-m", "sensor", *args], cwd=cwd, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "ev.jsonl").write_text("".join(json.dumps(dict(MOF, CommandLine=f"mofcomp {i}.mof")) + "\n"
                                        for i in range(3000)))
    (d / "garbage.bin").write_bytes(os.urandom(4096))
    (d / "status.json").write_text("[not a status")
    if hasattr(os, "mkfifo"):                      # nothing ever writes to it: opening it to read would wait
        os.mkfifo(d / "fifo")
    with open(d / "big.json", "wb") as fh:         # sparse: larger than any status file
        fh.truncate((16 << 20) + 1)
    # Each a whole config (a replay of ev.jsonl, alerts to an HTTPS receiver that is not there,
    # data in ./state) with one thing wrong.
    base = ('[sensor]\ndata_dir = "state"\ndrain_timeout_s = 1.0\n[source]\nkind = "replay"\n'
            '[source.replay]\npaths = ["ev.jsonl"]\n')
    ecs = '[output]\nformat = "ecs"\nurl = "https://127.0.0.1:1/x"\ntoken = "t"\n'
    bad_toml = {
        "deep.toml": base + "a = " + "[" * 3000 + "]" * 3000 + "\n",
        "latin1.toml": None,
        "tiny.toml": base + "[spool]\nmax_mb = 1e-300\n",
        "negative.toml": base + ecs + "connect_timeout = -5\n",
        "huge.toml": base + ecs + "[delivery]\nbackoff_base_s = 1e300\nbackoff_cap_s = 1e308\n",
        "gzip.toml": base + ecs + "gzip_level = 99\n",
        "array.toml": "sensor = [1, 2]\n",
        "notoml.toml": "[[[\n",
    }
    for name, text in bad_toml.items():
        p = d / name
        if text is None:
            p.write_bytes(base.encode() + b'hostname = "caf\xe9"\n')
        else:
            p.write_text(text)
        os.chmod(p, 0o600)
    return d


BAD = [
    # (argv, expected exit code)
    (["scan", "/nonexistent.jsonl"], 1),
    (["scan", "{d}/ev.jsonl", "-o", "/nonexistent/dir/out.jsonl"], 2),
    (["scan", "{d}/ev.jsonl", "-o", "{d}"], 2),
    (["scan", "{d}/ev.jsonl", "--engine", "fast"], 2),
    (["scan", "{d}/garbage.bin"], 1),
    (["scan", "{d}/ev.jsonl", "--rules", "/nonexistent/rules"], 1),
    (["run", "-c", "/nonexistent.toml"], 2),
    (["run", "--replay", "{d}/ev.jsonl", "--speed", "-1"], 2),
    (["run", "--replay", "{d}/ev.jsonl", "--speed", "nan"], 2),
    (["run", "-c", "{d}/tiny.toml", "--replay", "/nonexistent.jsonl"], 2),
    (["run", "--replay", "/nonexistent.jsonl"], 1),
    (["status", "--status-file", "/nonexistent.json"], 1),
    (["status", "--status-file", "{d}/status.json"], 1),
    (["status", "--status-file", "{d}/garbage.bin"], 1),
    (["status", "--status-file", "{d}/fifo"], 1),
    (["status", "--status-file", "/dev/zero"], 1),
    (["status", "--status-file", "{d}/big.json"], 1),
    (["status", "-c", "{d}/deep.toml"], 2),
    (["spool", "status", "--path", "/nonexistent.sqlite"], 1),
    (["spool", "status", "--path", "{d}/garbage.bin"], 1),
    (["spool", "dead", "--path", "{d}", ], 1),
    (["spool", "dead", "--limit", "-1"], 2),
    (["spool", "flush"], 2),
    (["config", "test", "/nonexistent.toml"], 2),
    (["config", "test", "{d}"], 2),
    (["config", "test", "{d}/garbage.bin"], 2),
    (["config"], 2),
    (["rules", "list", "/nonexistent/rules"], 1),
    (["rules", "validate", "/nonexistent/rules"], 1),
    (["rules", "validate", "{d}/garbage.bin"], 1),
    (["rules", "compile", str(ROOT / "tests/data/sigma/rules/mofcomp.yml"), "-o", "/nonexistent/dir/x.pack"], 2),
    (["rules", "compile", "{d}/garbage.bin", "-o", "{d}/x.pack"], 1),
    (["rules"], 2),
    (["peinfo", "/nonexistent.exe"], 1),
    (["peinfo", "{d}/garbage.bin"], 1),
    (["output", "test", "--url", "http://127.0.0.1:1/x"], 2),
    (["output", "test", "--url", "https://127.0.0.1:99999/x"], 2),
    (["output", "test", "--url", "https://127.0.0.1:1/x", "--ca-file", "/nonexistent.pem"], 2),
    (["output", "test", "--format", "syslog", "--url", "https://127.0.0.1:1/x"], 2),
    (["output", "test", "--url", "https://127.0.0.1:1/x", "--connect-timeout", "-5"], 2),
    (["output", "test", "--url", "https://127.0.0.1:1/x", "--connect-timeout", "0.2"], 1),
    (["output", "test", "-c", "{d}/huge.toml"], 2),
    (["output"], 2),
    (["service", "install"], 2),
    (["service", "install", "-c", "relative.toml"], 2),
    (["service", "reinstall"], 2),
    (["demo", "--fast"], 2),
    (["capture"], 2),
    (["selftest", "--timeout", "abc"], 2),
    (["bogus"], 2),
    ([], 2),
] + ([(["capture", "-o", "{d}/trace.jsonl"], 2)] if sys.platform != "win32" else []) + \
    [(["config", "test", f"{{d}}/{name}"], 2) for name in
     ("deep.toml", "latin1.toml", "tiny.toml", "negative.toml", "huge.toml", "gzip.toml", "array.toml",
      "notoml.toml")] + \
    [(["run", "-c", f"{{d}}/{name}"], 2) for name in
     ("deep.toml", "latin1.toml", "tiny.toml", "negative.toml", "huge.toml", "gzip.toml")]


@pytest.mark.parametrize("argv,code", BAD, ids=[" ".join(a) or "(none)" for a, _ in BAD])
def test_bad_arguments_never_show_a_traceback(files, tmp_path, argv, code):
    argv = [a.replace("{d}", str(files)) for a in argv]
    r = run(argv, cwd=tmp_path, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert "internal error" not in r.stderr, r.stderr
    assert r.returncode == code, r.stderr
    assert (r.stderr + r.stdout).strip(), "an error must say what is wrong"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["scan", "{d}/ev.jsonl"], ["config", "example"], ["rules", "list"],
                                  ["peinfo", str(ROOT / "sensor/data/demo/renamed_tool.exe")],
                                  ["scan", "{d}/ev.jsonl", "-o", "/dev/full"]])
def test_a_full_disk_is_one_line_and_exit_1(files, tmp_path, argv):
    argv = [a.replace("{d}", str(files)) for a in argv]
    with open("/dev/full", "w") as full:
        r = run(argv, cwd=tmp_path, stdout=full)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr


@pytest.mark.parametrize("argv", [["scan", "{d}/ev.jsonl"], ["config", "example"], ["rules", "list", "-v"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(files, tmp_path, argv):
    argv = [a.replace("{d}", str(files)) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "sensor", *argv], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    first = proc.stdout.readline()                 # `| head -1`
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert first
    assert b"Traceback" not in err and b"BrokenPipeError" not in err and b"Exception ignored" not in err, err
    assert proc.returncode == 0


def test_install_instructions_use_what_the_project_builds():
    """The package is not on the public index: the README never installs it from there, says so,
    and installs the wheel `make wheel` builds, after checking its hash."""
    assert not re.search(r"pip install\s+[\"']?etw-sensor", README)
    assert "not published on the public Python package index" in README
    assert "make wheel" in README and "Get-FileHash -Algorithm SHA256" in README
    assert re.search(r"^wheel:", (ROOT / "Makefile").read_text(), re.M)
