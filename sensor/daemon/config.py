"""The sensor's configuration: one TOML file, decoded into typed structs.

Unknown keys and wrong types are refused at start with the key path and the
reason (``config error: output.batch_size: Expected `int`, got `str```).
Relative paths are taken relative to the config file's folder.  Every key is
documented in ``sensor/data/sensor.example.toml``.
"""
from __future__ import annotations

import math
import os
import re
import sys
import tomllib
from typing import Any, Literal, Optional, Union

import msgspec

IS_WINDOWS = sys.platform == "win32"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


class _S(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SensorSection(_S):
    hostname: str = ""                 # "" = this machine's name
    data_dir: str = ""                 # "" = %ProgramData%\etw-sensor or ~/.local/state/etw-sensor
    status_file: str = ""              # "" = <data_dir>/status.json
    heartbeat_s: float = 30.0
    queue_size: int = 16384            # events waiting for the matcher (~2.5 KB each); more are dropped, counted
    batch_size: int = 512
    drain_timeout_s: float = 30.0      # on stop: time to drain queues and flush the spool


class LoggingSection(_S):
    level: Literal["debug", "info", "warning", "error"] = "info"
    file: str = ""                     # "" = stderr only
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    event_log: bool = True             # Windows: warnings and alerts to the Application log
    alerts: bool = True                # one WARNING line per alert in the log (and the Event Log)


class ReplaySection(_S):
    paths: list[str] = []
    speed: float = 0.0                 # 0 = as fast as possible; 1.0 = real time
    loop: int = 1
    block: bool = True                 # wait for queue room instead of dropping
    preload: bool = False              # read everything before starting (benchmarks)


class EtwSection(_S):
    session_name: str = "etw-sensor"
    buffer_kb: int = 256
    min_buffers: int = 64
    max_buffers: int = 128
    flush_ms: int = 20                 # forced flush period; <= 20 keeps back-fill ahead of exits
    rundown: bool = True               # capture-state rundown at start (seeds the process table)
    system_logger: bool = True         # private system-logger session for exact command lines
    query_interval_s: float = 1.0      # lost-event polling
    backfill: bool = True              # psutil back-fill of command line, user, cwd, integrity
    process_table_size: int = 65536


class SourceSection(_S):
    kind: Literal["etw", "replay"] = "etw" if IS_WINDOWS else "replay"
    replay: ReplaySection = msgspec.field(default_factory=ReplaySection)
    etw: EtwSection = msgspec.field(default_factory=EtwSection)


class RulesSection(_S):
    paths: list[str] = []              # Sigma YAML files/folders or compiled packs
    builtin: bool = True               # the built-in seed rule
    engine: Literal["auto", "compiled", "reference"] = "auto"


class PeSection(_S):
    enabled: bool = True
    cache_size: int = 4096
    # Replay only: where the images named by recorded events live on this machine,
    # e.g. {"C:\\Users\\Public\\" = "/srv/samples/"} (prefix match, case-insensitive).
    path_map: dict[str, str] = {}


class EnrichSection(_S):
    pe: PeSection = msgspec.field(default_factory=PeSection)


class ExclusionEntry(_S):
    name: str = ""
    rules: list[str] = []              # rule ids or titles (globs); empty = all rules, drops the event
    match: dict[str, Union[str, list[str]]] = {}   # image, command_line, user, parent_image, ...


class ThrottleSection(_S):
    window_s: float = 0.0              # 0 = off; else repeats of an alert within it are suppressed


class OutputSection(_S):
    format: str = "jsonl"
    url: str = ""
    path: str = ""                     # format jsonl: the file
    document: str = ""
    token: str = ""
    token_env: str = ""
    token_file: str = ""
    auth_scheme: str = ""
    hmac_secret: str = ""
    hmac_secret_env: str = ""
    hmac_secret_file: str = ""
    signature_header: str = ""
    ca_file: str = ""
    pin_sha256: str = ""
    client_cert: str = ""
    client_key: str = ""
    insecure_skip_verify: bool = False
    tls_min_version: str = ""
    allow_http: bool = False
    gzip: bool = True
    gzip_level: Optional[int] = None
    connect_timeout: Optional[float] = None
    read_timeout: Optional[float] = None
    pool_maxsize: Optional[int] = None
    headers: dict[str, str] = {}
    index: str = ""
    source: str = ""
    sourcetype: str = ""
    host: str = ""

    def options(self) -> dict:
        """The non-default options, as the output builder takes them."""
        out = {}
        for name in self.__struct_fields__:
            v = getattr(self, name)
            if v in ("", None, {}) and name != "format":
                continue
            out[name] = v
        return out


class SpoolSection(_S):
    path: str = ""                     # "" = <data_dir>/spool.sqlite
    max_mb: float = 256.0
    max_age_days: float = 7.0
    dead_letter_max: int = 10000       # rejected alerts kept for inspection/requeue


class DeliverySection(_S):
    batch_size: int = 500
    batch_max_kb: int = 4096           # spooled bytes per request at most (before gzip)
    batch_wait_ms: int = 200           # wait this long to fill a batch
    concurrency: int = 2               # requests in flight, each with its own batch
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    park_interval_s: float = 60.0      # retry period while parked (401/403/TLS refusal)


class Config(_S):
    sensor: SensorSection = msgspec.field(default_factory=SensorSection)
    logging: LoggingSection = msgspec.field(default_factory=LoggingSection)
    source: SourceSection = msgspec.field(default_factory=SourceSection)
    rules: RulesSection = msgspec.field(default_factory=RulesSection)
    enrich: EnrichSection = msgspec.field(default_factory=EnrichSection)
    exclusions: list[ExclusionEntry] = []
    throttle: ThrottleSection = msgspec.field(default_factory=ThrottleSection)
    output: OutputSection = msgspec.field(default_factory=OutputSection)
    spool: SpoolSection = msgspec.field(default_factory=SpoolSection)
    delivery: DeliverySection = msgspec.field(default_factory=DeliverySection)
    path: str = ""                     # set from the file name, not read from it


_PATH_RE = re.compile(r"\$\.?([^` ]*)")


def _key_path(msg: str) -> tuple[str, str]:
    """Split msgspec's "<reason> - at `$.a.b[0]`" into ("a.b[0]", reason)."""
    reason, sep, where = msg.rpartition(" - at ")
    if not sep:
        reason, path = msg, ""
    else:
        m = _PATH_RE.search(where)
        path = m.group(1) if m else where
    unknown = re.match(r"Object contains unknown field `([^`]+)`", reason)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
        reason = "unknown key"
    return path, reason


def default_data_dir() -> str:
    """Where the spool, status file and logs live by default."""
    if IS_WINDOWS:
        return os.path.join(os.environ.get("ProgramData", r"C:\ProgramData"), "etw-sensor")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "etw-sensor")


def default_config_path() -> str:
    """The config file ``run`` reads when none is given."""
    if IS_WINDOWS:
        return os.path.join(os.environ.get("ProgramFiles", r"C:\Program Files"), "etw-sensor",
                            "sensor.toml")
    return "/etc/etw-sensor/sensor.toml"


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    """Decode and check a config mapping; raises ConfigError naming the key."""
    try:
        cfg = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as exc:
        key, reason = _key_path(str(exc))
        raise ConfigError(f"{path}: {key}: {reason}" if key else f"{path}: {reason}") from None
    cfg.path = path
    _check(cfg, path)
    _resolve_paths(cfg, os.path.dirname(os.path.abspath(path)) if os.path.exists(path) else os.getcwd())
    return cfg


def load(path: str) -> Config:
    """Read and check a TOML config file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


def _positive(value: float, key: str, path: str, zero_ok: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{path}: {key}: must be a finite number, got {value}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{path}: {key}: must be {'>= 0' if zero_ok else '> 0'}, got {value}")


def _check(cfg: Config, path: str) -> None:
    s = cfg.sensor
    _positive(s.queue_size, "sensor.queue_size", path)
    _positive(s.batch_size, "sensor.batch_size", path)
    _positive(s.heartbeat_s, "sensor.heartbeat_s", path, zero_ok=True)
    _positive(s.drain_timeout_s, "sensor.drain_timeout_s", path, zero_ok=True)
    _positive(cfg.logging.max_bytes, "logging.max_bytes", path)
    _positive(cfg.logging.backups, "logging.backups", path, zero_ok=True)
    _positive(cfg.source.etw.query_interval_s, "source.etw.query_interval_s", path)
    _positive(cfg.delivery.backoff_cap_s, "delivery.backoff_cap_s", path)
    e = cfg.source.etw
    for key in ("buffer_kb", "min_buffers", "max_buffers", "flush_ms", "process_table_size"):
        _positive(getattr(e, key), f"source.etw.{key}", path)
    if e.max_buffers < e.min_buffers:
        raise ConfigError(f"{path}: source.etw.max_buffers: must be >= min_buffers ({e.min_buffers})")
    if e.flush_ms > 1000:
        raise ConfigError(f"{path}: source.etw.flush_ms: at most 1000 ms (got {e.flush_ms})")
    r = cfg.source.replay
    if cfg.source.kind == "replay" and not r.paths:
        raise ConfigError(f"{path}: source.replay.paths: a replay source needs at least one path")
    _positive(r.speed, "source.replay.speed", path, zero_ok=True)
    _positive(r.loop, "source.replay.loop", path)
    _positive(cfg.enrich.pe.cache_size, "enrich.pe.cache_size", path)
    _positive(cfg.throttle.window_s, "throttle.window_s", path, zero_ok=True)
    _positive(cfg.spool.max_mb, "spool.max_mb", path)
    _positive(cfg.spool.max_age_days, "spool.max_age_days", path)
    d = cfg.delivery
    _positive(d.batch_size, "delivery.batch_size", path)
    _positive(d.batch_wait_ms, "delivery.batch_wait_ms", path, zero_ok=True)
    _positive(d.batch_max_kb, "delivery.batch_max_kb", path)
    _positive(d.concurrency, "delivery.concurrency", path)
    _positive(d.park_interval_s, "delivery.park_interval_s", path)
    _positive(cfg.spool.dead_letter_max, "spool.dead_letter_max", path)
    _positive(d.backoff_base_s, "delivery.backoff_base_s", path)
    if d.backoff_cap_s < d.backoff_base_s:
        raise ConfigError(f"{path}: delivery.backoff_cap_s: must be >= backoff_base_s")
    from ..detect.noise import EXCLUSION_FIELDS, MODIFIERS
    for i, ex in enumerate(cfg.exclusions):
        if not ex.match:
            raise ConfigError(f"{path}: exclusions[{i}].match: needs at least one field pattern")
        for key in ex.match:
            name, _, mod = key.partition("|")
            if name not in EXCLUSION_FIELDS:
                raise ConfigError(f"{path}: exclusions[{i}].match.{key}: unknown field "
                                  f"(known: {', '.join(sorted(EXCLUSION_FIELDS))})")
            if mod not in MODIFIERS:
                raise ConfigError(f"{path}: exclusions[{i}].match.{key}: unknown modifier {mod!r}")
    o = cfg.output
    from ..deliver.outputs import FORMATS
    if o.format.lower() not in FORMATS:
        raise ConfigError(f"{path}: output.format: must be one of "
                          f"{', '.join(sorted(set(FORMATS.values())))}, got {o.format!r}")


def _resolve_paths(cfg: Config, base: str) -> None:
    def fix(p: str) -> str:
        if not p:
            return p
        p = os.path.expandvars(os.path.expanduser(p))
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    s = cfg.sensor
    s.data_dir = fix(s.data_dir) or default_data_dir()
    s.status_file = fix(s.status_file) or os.path.join(s.data_dir, "status.json")
    cfg.logging.file = fix(cfg.logging.file)
    cfg.source.replay.paths = [fix(p) for p in cfg.source.replay.paths]
    cfg.rules.paths = [fix(p) for p in cfg.rules.paths]
    cfg.enrich.pe.path_map = {k: fix(v) for k, v in cfg.enrich.pe.path_map.items()}
    cfg.spool.path = fix(cfg.spool.path) or os.path.join(s.data_dir, "spool.sqlite")
    o = cfg.output
    for key in ("path", "token_file", "hmac_secret_file", "ca_file", "client_cert", "client_key"):
        setattr(o, key, fix(getattr(o, key)))
    o.url = os.path.expandvars(o.url)
    if o.format.lower() in ("jsonl", "file") and not o.path:
        o.path = os.path.join(s.data_dir, "alerts.jsonl")
