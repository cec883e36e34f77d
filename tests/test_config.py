"""Configuration: typed TOML, every problem listed with its key path, numbers bounded to what the
code can use, `config test` = `run`'s validation (nothing created, OK only with exit 0), one
default-config lookup, the example config."""
from __future__ import annotations

import os
import re
import sys
import tomllib
from importlib import resources

import pytest

from sensor.cli import main
from sensor.daemon import config


def write(tmp_path, text: str, name: str = "sensor.toml", mode: int = 0o600):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    os.chmod(p, mode)
    return str(p)


REPLAY = '[source]\nkind = "replay"\n[source.replay]\npaths = ["rec.jsonl"]\n'
MOF = ('{"Image": "C:\\\\Windows\\\\System32\\\\wbem\\\\mofcomp.exe", '
       '"ParentImage": "C:\\\\Windows\\\\System32\\\\cmd.exe", "CommandLine": "mofcomp a.mof"}\n')


@pytest.fixture
def rec(tmp_path):
    p = tmp_path / "rec.jsonl"
    p.write_text(MOF)
    return p


@pytest.mark.parametrize("text,message", [
    ('[output]\nformatt = "ecs"\n', "output.formatt: unknown key"),
    ('[outputs]\n', "outputs: unknown key"),
    ('path = "x"\n', "path: unknown key"),
    ('[sensor]\nqueue_size = "big"\n', "sensor.queue_size: Expected `int`, got `str`"),
    ('[sensor]\nqueue_size = 0\n', "sensor.queue_size: must be from 1 to 10000000, got 0"),
    ('[rules]\nengine = "fast"\n', "rules.engine: Invalid enum value 'fast'"),
    ('[rules]\non_error = "ignore"\n', "rules.on_error: Invalid enum value 'ignore'"),
    ('[source.etw]\nbuffer_kb = 1.5\n', "source.etw.buffer_kb: Expected `int`, got `float`"),
    ('[source.etw]\nmin_buffers = 10\nmax_buffers = 5\n', "source.etw.max_buffers: must be >= min_buffers"),
    ('[[exclusions]]\nmatch = { imagee = "x" }\n', r"exclusions\[0\].match.imagee: unknown field"),
    ('[[exclusions]]\nname = "x"\n', r"exclusions\[0\].match: needs at least one field pattern"),
    ('[output]\nformat = "gelf"\n', "output.format: must be one of"),
    ('[delivery]\nbackoff_base_s = 10\nbackoff_cap_s = 1\n', "delivery.backoff_cap_s: must be >= backoff_base_s"),
    ('this is not toml', "not valid TOML"),
    # numbers the code cannot use (each was a traceback or a dead thread)
    ('[spool]\nmax_mb = 1e-300\n', r"spool.max_mb: must be from 1 to 1048576, got 1e-300"),
    ('[output]\nconnect_timeout = -5\n', "output.connect_timeout: must be from 0.01 to 600, got -5"),
    ('[delivery]\nbackoff_cap_s = 1e308\n', "delivery.backoff_cap_s: must be from 0.01 to 86400"),
    ('[output]\ngzip_level = 99\n', "output.gzip_level: must be from 0 to 9, got 99"),
    ('[sensor]\nheartbeat_s = 0.001\n', r"sensor.heartbeat_s: 0 \(off\) or at least 0.1 s"),
    ('[sensor]\nheartbeat_s = nan\n', "sensor.heartbeat_s: must be a finite number"),
    ('[sensor]\ndrain_timeout_s = inf\n', "sensor.drain_timeout_s: must be a finite number"),
    ('[throttle]\nwindow_s = nan\n', "throttle.window_s: must be a finite number"),
    ('[logging]\nmax_bytes = -5\n', "logging.max_bytes: must be from 4096"),
    ('source = { kind = "replay", replay = { paths = ["r"], speed = -1 } }\n',
     "source.replay.speed: must be from 0"),
    # header values (CR/LF would make every request fail)
    ('[output]\nheaders = { "X-A" = "a\\r\\nInjected: 1" }\n', "output.headers.X-A: the value holds a line break"),
    ('[output]\nheaders = { "Bad Name" = "v" }\n', "output.headers.Bad Name: not a valid HTTP header name"),
    ('[output]\nformat = "memory"\n', "output.format: must be one of"),
    # a final line break (a "$" in a check lets one through): every request would then fail
    ('[output]\nauth_scheme = "Bearer\\n"\n', "output.auth_scheme: must be one word"),
    ('[output]\nsignature_header = "X-Sig\\n"\n', "output.signature_header: not a valid HTTP header name"),
    ('[output]\nheaders = { "X-A\\n" = "v" }\n', "output.headers.X-A\n: not a valid HTTP header name"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = write(tmp_path, REPLAY + text if text.startswith("[") else text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(path)


def test_every_problem_is_listed_at_once(tmp_path):
    path = write(tmp_path, REPLAY + '[sensor]\nqueue_size = 0\nbatch_size = "x"\nbogus = 1\n'
                                    '[spool]\nmax_mb = 1e-300\n[output]\ngzip_level = 99\n'
                                    'headers = { "X" = "a\\nb" }\n')
    with pytest.raises(config.ConfigError) as exc:
        config.load(path)
    keys = sorted(e.split(":")[0] for e in exc.value.errors)
    assert keys == ["output.gzip_level", "output.headers.X", "sensor.batch_size", "sensor.bogus",
                    "sensor.queue_size", "spool.max_mb"]


def test_memory_format_is_not_offered(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        config.load(write(tmp_path, '[output]\nformat = "gelf"\n'))
    [msg] = exc.value.errors
    assert msg.startswith("output.format: must be one of") and "memory" not in msg and "null" not in msg


@pytest.mark.parametrize("raw,message", [
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "not valid TOML: nested too deeply"),
    (b'[sensor]\nhostname = "\xff\xfe"\n', r"not valid TOML: line 2: not UTF-8 \(byte 0xff\)"),
    (b"x" * (config.MAX_CONFIG_BYTES + 10), "larger than 1024 KiB"),
    (b"[sensor\n", "not valid TOML"),
    (b'sensor = 5\n', "sensor: Expected a table"),
])
def test_bad_toml_of_any_kind_is_a_config_error(tmp_path, raw, message):
    p = tmp_path / "bad.toml"
    p.write_bytes(raw)
    with pytest.raises(config.ConfigError, match=message):
        config.load(str(p))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(str(tmp_path / "nope.toml"))
    with pytest.raises(config.ConfigError, match="is a folder"):
        config.load(str(tmp_path))


def _load_in_thread(fn):
    """Run ``fn`` in a thread; (finished, result or exception). The join timeout only guards a
    hang: a blocking open of a FIFO no writer opens would wait for good."""
    import threading
    got: list = []

    def run():
        try:
            got.append(fn())
        except BaseException as exc:        # noqa: BLE001 - handed to the test
            got.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    return not t.is_alive(), (got[0] if got else None), t


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo (POSIX)")
def test_a_config_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "sensor.toml"
    os.mkfifo(fifo)
    done, got, t = _load_in_thread(lambda: config.load(str(fifo)))
    try:
        assert done, "config.load waited on a FIFO"
    finally:
        if not done:        # let the stuck open() return, so the thread ends
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join(60)
    assert isinstance(got, config.ConfigError) and "cannot read: not a regular file" in str(got), got


def test_relative_paths_and_defaults(tmp_path):
    path = write(tmp_path, REPLAY + '[sensor]\ndata_dir = "state"\n[rules]\npaths = ["rules"]\n')
    cfg = config.load(path)
    assert cfg.source.replay.paths == [str(tmp_path / "rec.jsonl")]
    assert cfg.rules.paths == [str(tmp_path / "rules")]
    assert cfg.sensor.data_dir == str(tmp_path / "state")
    assert cfg.spool.path == str(tmp_path / "state" / "spool.sqlite")
    assert cfg.sensor.status_file == str(tmp_path / "state" / "status.json")
    assert cfg.output.format == "jsonl" and cfg.output.path == str(tmp_path / "state" / "alerts.jsonl")
    assert cfg.sensor.heartbeat_s == 60.0 and cfg.rules.on_error == "fail"


def test_unset_environment_variable_in_a_path_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(config.ConfigError, match="sensor.data_dir: names the environment variable "
                                                 "NOT_SET_ANYWHERE, which is not set"):
        config.load(write(tmp_path, '[sensor]\ndata_dir = "${NOT_SET_ANYWHERE}/x"\n'))


# -- the example configuration ---------------------------------------------------------------

EXAMPLE = resources.files("sensor").joinpath("data", "sensor.example.toml").read_text()
SETTING = re.compile(r"^# ?(\[\[?[\w.]+\]\]?\s*$|[\w\"|.-]+\s*=)")


def test_example_config_is_valid_and_documents_every_key():
    data = tomllib.loads(EXAMPLE)
    cfg = config.parse(data, "example.toml")
    assert cfg.source.etw.flush_ms <= 20
    sections = {"sensor": config.SensorSection, "logging": config.LoggingSection,
                "source.etw": config.EtwSection, "source.replay": config.ReplaySection,
                "rules": config.RulesSection, "enrich.pe": config.PeSection,
                "throttle": config.ThrottleSection, "output": config.OutputSection,
                "spool": config.SpoolSection, "delivery": config.DeliverySection,
                "exclusions": config.ExclusionEntry}
    for section, cls in sections.items():
        for key in cls.__struct_fields__:
            if key == "update" and cls is config.RulesSection:   # a table of its own
                assert f"[{section}.{key}]" in EXAMPLE
                for sub in config.RulesUpdateSection.__struct_fields__:
                    assert re.search(rf"^(# )?{sub} =", EXAMPLE, re.M), f"{section}.update.{sub} missing"
                continue
            assert re.search(rf"^(# )?{key} =", EXAMPLE, re.M), f"{section}.{key} missing from the example"
    assert re.search(r"^# kind =", EXAMPLE, re.M)


def test_example_stays_valid_toml_when_any_commented_line_is_uncommented():
    lines = EXAMPLE.splitlines()
    commented = [i for i, line in enumerate(lines) if SETTING.match(line)]
    assert len(commented) > 25
    for i in commented:
        trial = list(lines)
        trial[i] = re.sub(r"^# ?", "", trial[i])
        try:
            tomllib.loads("\n".join(trial))
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"line {i + 1} uncommented is not valid TOML: {lines[i]!r}: {exc}")
    every = [re.sub(r"^# ?", "", line) if SETTING.match(line) else line for line in lines]
    tomllib.loads("\n".join(every))           # all of them at once too (no key twice)


@pytest.mark.skipif(sys.platform == "win32", reason="the non-Windows example replays the bundled recording")
def test_example_passes_config_test_and_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert main(["config", "example"]) == 0
    path = write(tmp_path, capsys.readouterr().out)
    assert main(["config", "test", path]) == 0
    assert ": OK: source replay, 2 rule(s)" in capsys.readouterr().out
    assert main(["run", "-c", path]) == 0
    alerts = (tmp_path / "state" / "etw-sensor" / "alerts.jsonl").read_text().splitlines()
    # the bundled recording's two mofcomp alerts (the renamed one needs the demo's path_map)
    assert sum('"kind":"alert"' in a for a in alerts) == 2


# -- config test = run's validation ----------------------------------------------------------

def test_config_test_command(tmp_path, rec, capsys):
    path = write(tmp_path, REPLAY + '[sensor]\ndata_dir = "state"\n[enrich.pe]\nenabled = false\n')
    assert main(["config", "test", path]) == 0
    assert "OK: source replay, 2 rule(s)" in capsys.readouterr().out
    assert not (tmp_path / "state").exists()                     # nothing created
    bad = write(tmp_path, REPLAY + '[spool]\nmax_mb = -1\n', "bad.toml")
    assert main(["config", "test", bad]) == 2
    cap = capsys.readouterr()
    assert "spool.max_mb: must be from 1" in cap.err and "OK" not in cap.out


CHECKS = [
    # (config text, the error `config test` and `run` both report)
    ('[output]\nformat = "splunk_hec"\nurl = "https://127.0.0.1:1"\n', "output.token: Splunk HEC needs a token"),
    ('[output]\nformat = "webhook"\nurl = "https://127.0.0.1:1"\ntoken = "t"\n',
     "output.hmac_secret: a webhook needs the secret"),
    ('[output]\nformat = "ecs"\nurl = "https://127.0.0.1:1"\n', "output.token: format ecs needs a token"),
    ('[output]\nformat = "ecs"\ntoken = "t"\n', "output.url: format ecs sends alerts over HTTPS"),
    ('[output]\nformat = "ecs"\nurl = "https://127.0.0.1:99999/x"\ntoken = "t"\n', "output: url must be"),
    ('[output]\nformat = "ecs"\nurl = "https://127.0.0.1:1"\ntoken_env = "NO_SUCH_VAR_X"\n',
     "output: token_env: environment variable NO_SUCH_VAR_X is not set"),
    ('[output]\nformat = "ecs"\nurl = "https://127.0.0.1:1"\ntoken = "t"\nca_file = "missing.pem"\n',
     "output: ca_file: .*missing.pem does not exist"),
    ('[source.replay]\npaths = ["rec.jsonl", "gone.jsonl"]\n', r"source.replay.paths\[1\]: .*gone.jsonl: no such file"),
    ('[rules]\npaths = ["no-rules-here"]\n', "rules: rule rejected: .*no-rules-here: no such file or folder"),
]


@pytest.mark.parametrize("text,message", CHECKS)
def test_config_test_and_run_refuse_the_same(tmp_path, rec, capsys, text, message):
    body = '[source]\nkind = "replay"\n' + ('' if "[source.replay]" in text else
                                             '[source.replay]\npaths = ["rec.jsonl"]\n')
    path = write(tmp_path, body + '[sensor]\ndata_dir = "state"\n' + text)
    assert main(["config", "test", path]) == 2
    test_err = capsys.readouterr().err
    assert re.search(message, test_err), test_err
    assert main(["run", "-c", path]) == 2
    run_err = capsys.readouterr().err
    assert re.search(message, run_err), run_err
    assert "not started" in run_err
    assert not (tmp_path / "state").exists()          # neither created the spool (or anything)


def test_one_run_lists_the_keys_and_what_they_point_to(tmp_path, rec, capsys):
    # A refused key (gzip_level) and a missing rule path: both reported by one `config test`
    # and one `run`, not the second only after the first is fixed.
    path = write(tmp_path, REPLAY + '[sensor]\ndata_dir = "state"\n[rules]\npaths = ["no-rules-here"]\n'
                                    '[output]\nformat = "jsonl"\ngzip_level = 99\n')
    for argv in (["config", "test", path], ["run", "-c", path]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "output.gzip_level: must be from 0 to 9" in err, err
        assert re.search("rules: rule rejected: .*no-rules-here: no such file or folder", err), err
        assert err.count("output.gzip_level") == 1
    assert not (tmp_path / "state").exists()


def test_token_with_a_line_break_is_refused(tmp_path, rec, capsys):
    token = tmp_path / "token.txt"
    token.write_text("abc\ndef\n")
    os.chmod(token, 0o600)
    path = write(tmp_path, REPLAY + f'[output]\nformat = "ecs"\nurl = "https://127.0.0.1:1"\n'
                                    f'token_file = "{token}"\n')
    assert main(["config", "test", path]) == 2
    assert "the token or secret holds a line break" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_readable_config_and_token_file_are_refused(tmp_path, rec, capsys):
    token = tmp_path / "token.txt"
    token.write_text("secret-token\n")
    os.chmod(token, 0o644)
    text = REPLAY + f'[output]\nformat = "ecs"\nurl = "https://127.0.0.1:1"\ntoken_file = "{token}"\n'
    path = write(tmp_path, text, mode=0o644)
    assert main(["config", "test", path]) == 2
    err = capsys.readouterr().err
    assert "config file: mode 0644: others can read it" in err and "--allow-readable-config" in err
    assert "output.token_file: mode 0644: others can read it" in err
    os.chmod(token, 0o600)
    assert main(["config", "test", path]) == 2                       # the config still
    assert main(["config", "test", path, "--allow-readable-config"]) == 0
    capsys.readouterr()
    os.chmod(path, 0o666)                                            # writable by others: never
    assert main(["config", "test", path, "--allow-readable-config"]) == 2
    assert "others can change it" in capsys.readouterr().err


def test_etw_source_needs_windows(tmp_path, capsys):
    if sys.platform == "win32":
        pytest.skip("this checks the refusal off Windows")
    path = write(tmp_path, '[source]\nkind = "etw"\n[sensor]\ndata_dir = "state"\n[enrich.pe]\nenabled = false\n')
    assert main(["run", "-c", path]) == 2
    assert "source.kind: 'etw' needs Windows" in capsys.readouterr().err
    assert main(["config", "test", path]) == 2                       # platform checks included
    assert "source.kind: 'etw' needs Windows" in capsys.readouterr().err


def test_etw_settings_reach_the_source(tmp_path):
    from sensor.daemon.assemble import etw_config
    path = write(tmp_path, '[source]\nkind = "etw"\n[source.etw]\nbuffer_kb = 512\nmin_buffers = 8\n'
                           'max_buffers = 16\nflush_ms = 5\nsystem_logger = false\n'
                           'session_name = "edr"\n[sensor]\nqueue_size = 100\n')
    from sensor.sources.etw_session import instance_session_name
    cfg = config.load(path)
    e = etw_config(cfg)
    assert (e.session.name, e.session.buffer_kb, e.session.min_buffers, e.session.max_buffers) == \
        (instance_session_name("edr", cfg.sensor.data_dir), 512, 8, 16)
    assert e.session.name.startswith("edr-") and e.logger.name == e.session.name + "-syslogger"
    assert e.session.flush_interval == 0.005 and e.session.keywords == 0x10
    assert e.system_logger is False and e.queue_size == 100
    with pytest.raises(config.ConfigError, match="source.etw.buffer_kb: must be from 4 to 16384"):
        config.load(write(tmp_path, '[source]\nkind = "etw"\n[source.etw]\nbuffer_kb = 2\n', "bad.toml"))


# -- one default-config lookup ---------------------------------------------------------------

def test_every_command_uses_the_same_default_config(tmp_path, monkeypatch, capsys):
    """`run`, `status`, `spool` and `config test` without -c: the default file, else the
    defaults, so they all find the same data folder."""
    monkeypatch.setattr(config, "default_config_path", lambda: str(tmp_path / "absent.toml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    rec = tmp_path / "rec.jsonl"
    rec.write_text(MOF)
    assert main(["run", "--replay", str(rec)]) == 0
    assert "using the defaults" in capsys.readouterr().err
    data = tmp_path / "state" / "etw-sensor"
    alerts = [a for a in (data / "alerts.jsonl").read_text().splitlines() if '"kind":"alert"' in a]
    assert len(alerts) == 1
    assert main(["status"]) == 0                                  # found the status file
    assert "Potential Suspicious Mofcomp Execution" in capsys.readouterr().out
    assert main(["spool", "status"]) == 0                         # and the spool
    assert str(data / "spool.sqlite") in capsys.readouterr().out
    # with a default file installed, every command reads it
    other = tmp_path / "other"
    path = write(tmp_path, f'[sensor]\ndata_dir = "{other}"\n', "installed.toml")
    monkeypatch.setattr(config, "default_config_path", lambda: path)
    assert main(["status"]) == 1
    assert str(other / "status.json") in capsys.readouterr().err
    assert main(["run", "--replay", str(rec)]) == 0
    assert (other / "status.json").exists()
    assert main(["status"]) == 0


def test_alert_log_line_prints_missing_values_as_dash():
    from sensor.daemon.assemble import alert_log_line
    line = alert_log_line({"id": "i", "rule": {"level": "critical", "title": "T", "id": "r"},
                           "PROCESSNAME": "C:\\m.exe", "COMMANDLINE": "m x", "HOSTNAME": "H",
                           "USERNAME": None})
    assert line.startswith("ALERT [critical] T (r): C:\\m.exe | m x | parent - | user - | host H")
    assert "None" not in line
