"""Any value for any documented key: `config test` (which is `run`'s validation) accepts it or
refuses it naming the key, with exit code 0 or 2; never a traceback, an internal error or
another exit code (README, "Configuration"; the operator's config file is an input like any
other)."""
from __future__ import annotations

import json
import math
import os
import re
import tomllib
from importlib import resources

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensor.cli import main

EXAMPLE = resources.files("sensor").joinpath("data", "sensor.example.toml").read_text()
SETTING = re.compile(r"^# ?(\[\[?[\w.]+\]\]?\s*$|[\w\"|.-]+\s*=)")


def _every_setting() -> dict:
    lines = [re.sub(r"^# ?", "", line) if SETTING.match(line) else line for line in EXAMPLE.splitlines()]
    return tomllib.loads("\n".join(lines))


def _leaves(d: dict, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.append(prefix + (k,))          # the table itself may be given a bad value too
            out += _leaves(v, prefix + (k,))
        else:
            out.append(prefix + (k,))
    return out


KEYS = sorted(_leaves(_every_setting()))

# -- a small TOML writer (dotted keys, inline values) for what the strategies make --------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)          # JSON's escapes are TOML's basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml(d: dict) -> str:
    lines = []

    def walk(node, path):
        for k, v in node.items():
            if isinstance(v, dict) and v:
                walk(v, path + (k,))
            else:
                lines.append(".".join(_key(p) for p in path + (k,)) + " = " + _value(v))
    walk(d, ())
    return "\n".join(lines) + "\n"


SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 32, 2 ** 63 - 1, -(2 ** 63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e308, 0.5]),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n", "a\r\nb: c", "\x00", "..", "../../etc/passwd", "/dev/zero",
                     "C:\\Windows", "${NO_SUCH_VAR_FOR_FUZZ}", "%NO_SUCH%", "x" * 5000,
                     "https://127.0.0.1:1/", "https://", "ecs", "replay", "etw", "normal"]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=8), SCALARS, max_size=3),
)


def _set(d: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = d[k] = {}
        d = nxt
    d[path[-1]] = value


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    (d / "rec.jsonl").write_text('{"Image": "C:\\\\Windows\\\\System32\\\\cmd.exe", "CommandLine": "cmd"}\n')
    return d


FORMATS = ["minimal", "jsonl", "ecs", "splunk_hec", "elasticsearch", "webhook", "syslog"]


def _base(fmt: str, folder) -> dict:
    """A config that `config test` accepts: the minimal one, or every documented setting with
    the given output format (credentials inline, no files it would need)."""
    replay = {"kind": "replay", "replay": {"paths": [str(folder / "rec.jsonl")]}}
    if fmt == "minimal":
        return {"source": replay, "sensor": {"data_dir": str(folder / "state")}}
    d = _every_setting()
    d["source"].update(replay)
    d["source"]["replay"] = dict(d["source"].get("replay", {}), paths=replay["replay"]["paths"])
    d["sensor"]["data_dir"] = str(folder / "state")
    d["rules"]["update"]["url"] = ""
    out = d["output"]
    for k in ("token_env", "token_file", "hmac_secret_env", "hmac_secret_file", "ca_file",
              "client_cert", "client_key", "pin_sha256"):
        out.pop(k, None)
    out.update(format=fmt, token="t", hmac_secret="s" * 32,
               url="tls://127.0.0.1:6514" if fmt == "syslog" else "https://127.0.0.1:1/x")
    return d


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_bases_are_accepted(folder, capsys, fmt):
    f = folder / f"base-{fmt}.toml"
    f.write_text(_toml(_base(fmt, folder)), encoding="utf-8")
    os.chmod(f, 0o600)
    assert main(["config", "test", str(f)]) == 0, capsys.readouterr().err


@settings(max_examples=int(os.environ.get("FUZZ_N", "300")), deadline=None,
          derandomize=not os.environ.get("FUZZ_N"),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), path=st.sampled_from(KEYS), value=VALUES)
@example(fmt="minimal", path=("spool", "max_mb"), value=float("nan"))
@example(fmt="minimal", path=("source",), value=[])
@example(fmt="webhook", path=("output", "headers"), value={"X": "\x00"})
@example(fmt="syslog", path=("output", "syslog_facility"), value="local8")
def test_any_value_for_any_key_is_accepted_or_refused_naming_it(folder, capsys, fmt, path, value):
    cfg = _base(fmt, folder)
    _set(cfg, path, value)
    try:
        text = _toml(cfg)
        tomllib.loads(text)
    except (TypeError, tomllib.TOMLDecodeError, ValueError):
        return                                   # not expressible in TOML (a surrogate, say)
    f = folder / "sensor.toml"
    f.write_text(text, encoding="utf-8")
    os.chmod(f, 0o600)
    capsys.readouterr()
    code = main(["config", "test", str(f)])
    out, err = capsys.readouterr()
    assert "internal error" not in err and "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert "config error:" in err, err
        # The message names the key, or (for a pair of keys checked together) mentions it.
        names = {".".join(path[:i]) for i in range(1, len(path) + 1)} | {path[-1]}
        assert any(n in err for n in names), (path, err)
    else:
        assert ": OK:" in out, out
    assert not (folder / "state").exists()       # `config test` creates nothing
