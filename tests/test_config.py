"""Configuration: typed TOML, refused with the key path, relative paths, example config."""
from __future__ import annotations

import tomllib
from importlib import resources

import pytest

from sensor.daemon import config
from sensor.cli import main


def write(tmp_path, text: str):
    p = tmp_path / "sensor.toml"
    p.write_text(text, encoding="utf-8")
    return str(p)


REPLAY = '[source]\nkind = "replay"\n[source.replay]\npaths = ["rec.jsonl"]\n'


@pytest.mark.parametrize("text,message", [
    ('[output]\nformatt = "ecs"\n', "output.formatt: unknown key"),
    ('[outputs]\n', "outputs: unknown key"),
    ('[sensor]\nqueue_size = "big"\n', "sensor.queue_size: Expected `int`, got `str`"),
    ('[sensor]\nqueue_size = 0\n', "sensor.queue_size: must be > 0"),
    ('[rules]\nengine = "fast"\n', "rules.engine: Invalid enum value 'fast'"),
    ('[source.etw]\nbuffer_kb = 1.5\n', "source.etw.buffer_kb: Expected `int`, got `float`"),
    ('[source.etw]\nmin_buffers = 10\nmax_buffers = 5\n', "source.etw.max_buffers: must be >= min_buffers"),
    ('[[exclusions]]\nmatch = { imagee = "x" }\n', r"exclusions\[0\].match.imagee: unknown field"),
    ('[[exclusions]]\nname = "x"\n', r"exclusions\[0\].match: needs at least one field pattern"),
    ('[output]\nformat = "syslog"\n', "output.format: must be one of"),
    ('[delivery]\nbackoff_base_s = 10\nbackoff_cap_s = 1\n', "delivery.backoff_cap_s: must be >= backoff_base_s"),
    ('this is not toml', "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = write(tmp_path, REPLAY + text if text.startswith("[") else text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(str(tmp_path / "nope.toml"))


def test_relative_paths_and_defaults(tmp_path):
    path = write(tmp_path, REPLAY + '[sensor]\ndata_dir = "state"\n[rules]\npaths = ["rules"]\n')
    cfg = config.load(path)
    assert cfg.source.replay.paths == [str(tmp_path / "rec.jsonl")]
    assert cfg.rules.paths == [str(tmp_path / "rules")]
    assert cfg.sensor.data_dir == str(tmp_path / "state")
    assert cfg.spool.path == str(tmp_path / "state" / "spool.sqlite")
    assert cfg.sensor.status_file == str(tmp_path / "state" / "status.json")
    assert cfg.output.format == "jsonl" and cfg.output.path == str(tmp_path / "state" / "alerts.jsonl")


def test_example_config_is_valid_and_documents_every_key():
    text = resources.files("sensor").joinpath("data", "sensor.example.toml").read_text()
    data = tomllib.loads(text)
    cfg = config.parse(data, "example.toml")
    assert cfg.source.etw.flush_ms <= 20
    # every struct field appears in the example (commented or not)
    for section in ("sensor", "logging", "rules", "throttle", "spool", "delivery"):
        for key in getattr(config.Config, "__annotations__") and getattr(cfg, section).__struct_fields__:
            assert f"{key} =" in text, f"{section}.{key} missing from the example"
    for key in config.EtwSection.__struct_fields__:
        assert f"{key} =" in text, f"source.etw.{key} missing from the example"


def test_config_test_command(tmp_path, capsys):
    rec = tmp_path / "rec.jsonl"
    rec.write_text("{}\n")
    path = write(tmp_path, REPLAY + '[sensor]\ndata_dir = "state"\n[enrich.pe]\nenabled = false\n')
    assert main(["config", "test", path]) == 0
    assert "OK: source replay, 1 rule(s)" in capsys.readouterr().out
    bad = write(tmp_path, REPLAY + '[spool]\nmax_mb = -1\n')
    assert main(["config", "test", bad]) == 2
    assert "spool.max_mb: must be > 0" in capsys.readouterr().err


def test_etw_source_needs_windows(tmp_path, capsys):
    import sys
    if sys.platform == "win32":
        pytest.skip("this checks the refusal off Windows")
    path = write(tmp_path, '[source]\nkind = "etw"\n[sensor]\ndata_dir = "state"\n[enrich.pe]\nenabled = false\n')
    assert main(["run", "-c", path]) == 2
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
    bad = write(tmp_path, '[source]\nkind = "etw"\n[source.etw]\nbuffer_kb = 2\n')
    with pytest.raises(config.ConfigError, match="source.etw: buffer_kb must be within"):
        etw_config(config.load(bad))


@pytest.mark.parametrize("text,key", [
    ("[sensor]\nheartbeat_s = nan\n", "sensor.heartbeat_s"),
    ("[sensor]\ndrain_timeout_s = inf\n", "sensor.drain_timeout_s"),
    ("[spool]\nmax_mb = inf\n", "spool.max_mb"),
    ("[throttle]\nwindow_s = nan\n", "throttle.window_s"),
    ("[delivery]\nbackoff_base_s = nan\n", "delivery.backoff_base_s"),
    ("[logging]\nmax_bytes = -5\n", "logging.max_bytes"),
])
def test_non_finite_and_negative_numbers_refused(tmp_path, text, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", "\\.") + ": must be"):
        config.load(write(tmp_path, REPLAY + text))


def test_run_without_a_config_uses_the_defaults(tmp_path, monkeypatch, capsys):
    """`run` with no config installed starts on the defaults (here: a replay, off Windows)."""
    import json as _json
    monkeypatch.setattr(config, "default_config_path", lambda: str(tmp_path / "absent.toml"))
    import sensor.commands.run as run_cmd
    monkeypatch.setattr(run_cmd, "default_config_path", lambda: str(tmp_path / "absent.toml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    rec = tmp_path / "rec.jsonl"
    rec.write_text(_json.dumps({"Image": "C:\\Windows\\System32\\wbem\\mofcomp.exe",
                                "ParentImage": "C:\\Windows\\System32\\cmd.exe",
                                "CommandLine": "mofcomp a.mof"}) + "\n")
    assert main(["run", "--replay", str(rec)]) == 0
    assert "using the defaults" in capsys.readouterr().err
    alerts = (tmp_path / "state" / "etw-sensor" / "alerts.jsonl").read_text().splitlines()
    assert len(alerts) == 1


def test_alert_log_line():
    from sensor.daemon.assemble import alert_log_line
    line = alert_log_line({"id": "i", "rule": {"level": "critical", "title": "T", "id": "r"},
                           "PROCESSNAME": "C:\\m.exe", "COMMANDLINE": "m x", "HOSTNAME": "H"})
    assert line.startswith("ALERT [critical] T (r): C:\\m.exe | m x | parent None")
