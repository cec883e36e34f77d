"""The sensor's configuration: one TOML file, decoded into typed structs.

Every problem is reported at once, each with its key path and the reason
(``output.batch_size: Expected `int`, got `str```); unknown keys, wrong types,
non-finite numbers and numbers outside what the code can use (:data:`LIMITS`) are
refused. Relative paths are taken relative to the config file's folder. Every key is
documented in ``sensor/data/sensor.example.toml``.

What needs the machine (rule files, TLS material, secrets in files or the environment,
folders the sensor will write, the platform) is checked by
``sensor.daemon.assemble.validate``, which ``run``, the service and ``config test`` share.
"""
from __future__ import annotations

import math
import os
import re
import sys
import tomllib
import typing
from typing import Any, Literal, Optional, Union

import msgspec

from .._files import read_regular

IS_WINDOWS = sys.platform == "win32"
MAX_CONFIG_BYTES = 1024 * 1024   # a config is a few KB; anything near this is not one


class ConfigError(ValueError):
    """A configuration that cannot be used; ``errors`` lists every problem (key: reason)."""

    def __init__(self, errors: list[str] | str, path: str = "", config: "Config | None" = None):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.path = path
        # The decoded config (refused keys at their defaults) when the file parsed, so the
        # checks on what it points to (rules, paths, file modes) can be listed in the same run.
        self.config = config
        prefix = f"{path}: " if path else ""
        super().__init__("\n".join(prefix + e for e in self.errors))


class _S(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class SensorSection(_S):
    hostname: str = ""                 # "" = this machine's name
    data_dir: str = ""                 # "" = %ProgramData%\etw-sensor or ~/.local/state/etw-sensor
    status_file: str = ""              # "" = <data_dir>/status.json
    heartbeat_s: float = 60.0          # status file, log line and health document to the SIEM
    queue_size: int = 16384            # events waiting for the matcher (~2.5 KB each); more are dropped, counted
    batch_size: int = 512
    # Matched alerts wait this long for the alerts of later batches: one spool transaction and
    # one fsync for all of them. What is not yet committed is lost on a crash (docs/delivery.md).
    commit_delay_s: float = 0.1
    drain_timeout_s: float = 30.0      # on stop: time to drain queues and flush the spool
    # The budget (README, "Running a fleet"): 0 = no limit. CPU in percent of one core, over
    # a window; over it, optional work is shed in a fixed order. Memory caps the tables.
    cpu_limit_percent: float = 0.0
    cpu_window_s: float = 5.0
    memory_limit_mb: float = 0.0
    control: bool = True               # the local control channel (`etw-sensor reload`)


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
    max_line_bytes: int = 1024 * 1024  # longer JSON lines are skipped and reported


class EtwSection(_S):
    session_name: str = "etw-sensor"
    buffer_kb: int = 256
    min_buffers: int = 64
    max_buffers: int = 128
    flush_ms: int = 20                 # forced flush period; <= 20 keeps back-fill ahead of exits
    rundown: bool = True               # capture-state rundown at start (seeds the process table)
    system_logger: bool = True         # private system-logger session for exact command lines
    query_interval_s: float = 10.0     # watchdog pass: lost-event counters, a session stopped from outside
    backfill: bool = True              # psutil back-fill of command line, user, cwd, integrity
    process_table_size: int = 65536
    save_tree: bool = True             # save the process table across restarts (<data_dir>/process_tree.json)
    save_tree_interval_s: float = 300.0


class SourceSection(_S):
    kind: Literal["etw", "replay"] = "etw" if IS_WINDOWS else "replay"
    replay: ReplaySection = msgspec.field(default_factory=ReplaySection)
    etw: EtwSection = msgspec.field(default_factory=EtwSection)


class TrustedKeyEntry(_S):
    id: str = ""                       # the key id packs are signed with
    public_key: str = ""               # inline: the base64 key or a whole .pub line
    file: str = ""                     # or a .pub file written by `etw-sensor rules keygen`
    # trusted until (UTC): a TOML date or date-time, or the same as a string; "" = no end
    not_after: Any = ""


class RulesUpdateSection(_S):
    url: str = ""                      # https://... a (signed) rule pack, polled
    interval_s: float = 300.0
    ca_file: str = ""                  # TLS as [output]: CA file, pin, client certificate
    pin_sha256: str = ""
    client_cert: str = ""
    client_key: str = ""
    tls_min_version: Literal["", "TLSv1.2", "TLSv1.3"] = ""
    token_env: str = ""
    token_file: str = ""
    timeout_s: float = 30.0
    max_mb: float = 64.0


class RulesSection(_S):
    paths: list[str] = []              # Sigma YAML files/folders or compiled packs
    builtin: bool = True               # the built-in seed rule
    engine: Literal["auto", "compiled", "reference"] = "auto"
    # "fail": a missing path, a rejected rule or a bad pack stops the start (exit 2);
    # "skip": start without them, and report them (heartbeat, status, a health alert).
    on_error: Literal["fail", "skip"] = "fail"
    # Signed packs: with keys listed, only packs signed by one of them load.
    trusted_keys: list[TrustedKeyEntry] = []
    watch_s: float = 5.0               # poll the rule files for changes (0 = off); a change reloads
    update: RulesUpdateSection = msgspec.field(default_factory=RulesUpdateSection)
    placeholders: str = ""             # YAML file: values for |expand placeholders
    allow_backtracking: list[str] = []  # rule ids whose regexes may backtrack (step-budgeted)


class CorrelationSection(_S):
    lateness_s: float = 5.0            # reorder buffer: how late an event may come and count
    max_state: int = 20_000            # window entries kept per correlation; more evict, counted
    max_state_mb: float = 64.0         # and their memory per correlation (estimated); more evict
    max_evidence: int = 100            # event ids listed per correlation alert
    state_file: str = ""               # "" = <data_dir>/correlation-state.json
    persist: bool = True               # save the windows on stop (and every checkpoint_s)
    checkpoint_s: float = 60.0         # 0 = save on stop only


class PeSection(_S):
    enabled: bool = True
    cache_size: int = 4096
    # Replay only: where the images named by recorded events live on this machine,
    # e.g. {"C:\\Users\\Public\\" = "/srv/samples/"} (prefix match, case-insensitive).
    path_map: dict[str, str] = {}


class HashesSection(_S):
    # Hashes (Sysmon's "SHA256=...,MD5=...,IMPHASH=..."): computed only when a loaded rule reads
    # the field, or for every alert when in_alerts is set.
    algorithms: list[Literal["SHA1", "MD5", "SHA256", "IMPHASH"]] = msgspec.field(
        default_factory=lambda: ["SHA256", "MD5", "IMPHASH"])
    in_alerts: bool = False
    max_file_mb: float = 64.0          # a larger image gets no Hashes
    cache_size: int = 4096


class EnrichSection(_S):
    pe: PeSection = msgspec.field(default_factory=PeSection)
    hashes: HashesSection = msgspec.field(default_factory=HashesSection)


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
    document: Literal["", "ecs", "alert"] = ""
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
    tls_min_version: Literal["", "TLSv1.2", "TLSv1.3"] = ""
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
    health_index: str = ""             # Elasticsearch: where health documents go
    health_sourcetype: str = ""        # Splunk HEC: the sourcetype of health documents
    syslog_format: Literal["", "rfc5424", "rfc3164"] = ""      # syslog: default rfc5424
    syslog_framing: Literal["", "octet-counting", "lf"] = ""   # default: octet-counting (5424), lf (3164)
    syslog_facility: str = ""          # default local0
    syslog_app_name: str = ""          # default etw-sensor

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
    sync: Literal["full", "normal"] = "full"   # normal: no fsync per commit (a power cut may lose the last ones)


class DeliverySection(_S):
    batch_size: int = 500
    batch_max_kb: int = 4096           # spooled bytes per request at most (before gzip)
    batch_wait_ms: int = 5000          # the linger: wait this long to fill a batch
    concurrency: int = 2               # requests in flight, each with its own batch
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    park_interval_s: float = 60.0      # retry period while parked (401/403/TLS refusal)


class Config(_S):
    sensor: SensorSection = msgspec.field(default_factory=SensorSection)
    logging: LoggingSection = msgspec.field(default_factory=LoggingSection)
    source: SourceSection = msgspec.field(default_factory=SourceSection)
    rules: RulesSection = msgspec.field(default_factory=RulesSection)
    correlation: CorrelationSection = msgspec.field(default_factory=CorrelationSection)
    enrich: EnrichSection = msgspec.field(default_factory=EnrichSection)
    exclusions: list[ExclusionEntry] = []
    throttle: ThrottleSection = msgspec.field(default_factory=ThrottleSection)
    output: OutputSection = msgspec.field(default_factory=OutputSection)
    spool: SpoolSection = msgspec.field(default_factory=SpoolSection)
    delivery: DeliverySection = msgspec.field(default_factory=DeliverySection)
    path: str = ""                     # set from the file name, not read from it


# What the code can use: (lowest, highest) for every number, inclusive. A value outside is
# refused with its key (a 1e-300 MB spool, a negative timeout, a 1e308 s back-off cap).
DAY = 86400.0
LIMITS: dict[str, tuple[float, float]] = {
    "sensor.heartbeat_s": (0.0, DAY),
    "sensor.queue_size": (1, 10_000_000),
    "sensor.batch_size": (1, 65536),
    "sensor.commit_delay_s": (0.0, 5.0),
    "sensor.drain_timeout_s": (0.0, 3600.0),
    "sensor.cpu_limit_percent": (0.0, 6400.0),
    "sensor.cpu_window_s": (0.5, 3600.0),
    "sensor.memory_limit_mb": (0.0, 1024.0 * 1024.0),
    "rules.watch_s": (0.0, DAY),
    "rules.update.interval_s": (1.0, 7 * DAY),
    "rules.update.timeout_s": (0.1, 3600.0),
    "rules.update.max_mb": (0.01, 4096.0),
    "logging.max_bytes": (4096, 1 << 40),
    "logging.backups": (0, 1000),
    "source.replay.speed": (0.0, 1e6),
    "source.replay.loop": (1, 1_000_000),
    "source.replay.max_line_bytes": (1024, 1 << 30),
    "source.etw.buffer_kb": (4, 16384),
    "source.etw.min_buffers": (2, 4096),
    "source.etw.max_buffers": (2, 4096),
    "source.etw.flush_ms": (1, 1000),
    "source.etw.query_interval_s": (0.05, 3600.0),
    "source.etw.process_table_size": (1, 10_000_000),
    "source.etw.save_tree_interval_s": (1.0, 7 * DAY),
    "enrich.pe.cache_size": (1, 1_000_000),
    "enrich.hashes.cache_size": (1, 1_000_000),
    "enrich.hashes.max_file_mb": (0.001, 4096.0),
    "correlation.lateness_s": (0.0, DAY),
    "correlation.max_state": (1, 10_000_000),
    "correlation.max_state_mb": (1.0, 1024.0 * 1024.0),
    "correlation.max_evidence": (1, 100_000),
    "correlation.checkpoint_s": (0.0, DAY),
    "throttle.window_s": (0.0, 7 * DAY),
    "output.gzip_level": (0, 9),
    "output.connect_timeout": (0.01, 600.0),
    "output.read_timeout": (0.01, 3600.0),
    "output.pool_maxsize": (1, 64),
    "spool.max_mb": (1.0, 1024.0 * 1024.0),
    "spool.max_age_days": (0.01, 3650.0),
    "spool.dead_letter_max": (1, 10_000_000),
    "delivery.batch_size": (1, 100_000),
    "delivery.batch_max_kb": (1, 1024 * 1024),
    "delivery.batch_wait_ms": (0, 60_000),
    "delivery.concurrency": (1, 64),
    "delivery.backoff_base_s": (0.01, 3600.0),
    "delivery.backoff_cap_s": (0.01, DAY),
    "delivery.park_interval_s": (0.01, DAY),
}
MIN_HEARTBEAT_S = 0.1
MIN_MEMORY_MB = 64.0

# Formats an operator may configure (the output registry also has an in-memory one for tests).
USER_FORMATS = {
    "ecs": "ecs", "ndjson": "ecs", "ecs_ndjson": "ecs",
    "splunk_hec": "splunk_hec", "splunk": "splunk_hec", "hec": "splunk_hec",
    "elasticsearch": "elasticsearch", "elastic": "elasticsearch", "es": "elasticsearch",
    "webhook": "webhook", "jsonl": "jsonl", "file": "jsonl", "syslog": "syslog",
}
HTTP_FORMATS = ("ecs", "splunk_hec", "elasticsearch", "webhook")

_PATH_RE = re.compile(r"\$\.?([^` ]*)")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")    # an HTTP header name (RFC 9110); fullmatch only
_UNSET_VAR = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


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
    """The config file every command reads when none is given."""
    if IS_WINDOWS:
        return os.path.join(os.environ.get("ProgramFiles", r"C:\Program Files"), "etw-sensor",
                            "sensor.toml")
    return "/etc/etw-sensor/sensor.toml"


DEFAULTS_NAME = "<defaults>"


def find_config(given: str | None) -> tuple[Config, str | None]:
    """The config every command uses: the file given, else the default file, else the defaults.

    Returns the config and, when the defaults are used, a note saying so. One lookup for
    ``run``, ``status``, ``spool`` and ``config test``, so they all find the same data folder.
    """
    if given:
        return load(given), None
    path = default_config_path()
    if os.path.exists(path):
        return load(path), None
    return parse({}, DEFAULTS_NAME), (f"no config at {path}: using the defaults "
                                      f"(see `etw-sensor config example`)")


# -- decoding ------------------------------------------------------------------------------

def _struct_type(t: Any) -> type | None:
    return t if isinstance(t, type) and issubclass(t, msgspec.Struct) else None


def _check_number(value: Any, key: str, errors: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{key}: must be a finite number, got {value}")
        return
    bounds = LIMITS.get(key)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        lo, hi = (int(b) if float(b).is_integer() else b for b in bounds)
        errors.append(f"{key}: must be from {lo} to {hi}, got {value}")


def _walk(data: Any, cls: type, where: str, errors: list[str], bad: set[str]) -> Any:
    """Check ``data`` against struct ``cls`` field by field, so every problem is found.

    Returns ``data`` without the bad values (their keys go to ``bad``), so the rest can still
    be decoded and cross-checked.
    """
    if not isinstance(data, dict):
        errors.append(f"{where or 'the file'}: Expected a table, got `{type(data).__name__}`")
        bad.add(where)
        return {}
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    clean: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        f = fields.get(key)
        if f is None or (cls is Config and key == "path"):
            errors.append(f"{path}: unknown key")
            continue
        sub = _struct_type(f.type)
        if sub is not None:
            clean[key] = _walk(value, sub, path, errors, bad)
            continue
        if typing.get_origin(f.type) is list and _struct_type(typing.get_args(f.type)[0]):
            if not isinstance(value, list):
                errors.append(f"{path}: Expected an array of tables, got `{type(value).__name__}`")
                bad.add(path)
                continue
            clean[key] = [_walk(item, typing.get_args(f.type)[0], f"{path}[{i}]", errors, bad)
                          for i, item in enumerate(value)]
            continue
        try:
            msgspec.convert(value, f.type, strict=True)
        except msgspec.ValidationError as exc:
            inner, reason = _key_path(str(exc))
            sep = "" if not inner or inner.startswith("[") else "."
            errors.append(f"{path}{sep}{inner}: {reason}")
            bad.add(path)
            continue
        n = len(errors)
        _check_number(value, path, errors)
        if len(errors) > n:
            bad.add(path)
            continue
        clean[key] = value
    return clean


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    """Decode and check a config mapping; raises ConfigError listing every problem."""
    errors: list[str] = []
    bad: set[str] = set()
    clean = _walk(data, Config, "", errors, bad)
    try:
        cfg = msgspec.convert(clean, Config, strict=True)
    except msgspec.ValidationError as exc:   # the walk above should have caught it
        key, reason = _key_path(str(exc))
        raise ConfigError(errors + [f"{key}: {reason}" if key else reason], path) from None
    cfg.path = path
    # Checks across keys, except those that involve a key already refused above.
    errors += [e for e in _check(cfg) if e.split(":", 1)[0] not in bad
               and not any(k in bad for k in _CROSS.get(e.split(":", 1)[0], ()))]
    base = os.path.dirname(os.path.abspath(path)) if os.path.exists(path) else os.getcwd()
    errors += _resolve_paths(cfg, base)
    if errors:
        raise ConfigError(errors, path, config=cfg)
    return cfg


# A cross-key check -> the other keys it reads (skipped when one of them was refused).
_CROSS = {"source.etw.max_buffers": ("source.etw.min_buffers",),
          "delivery.backoff_cap_s": ("delivery.backoff_base_s",)}


def load(path: str) -> Config:
    """Read and check a TOML config file."""
    if os.path.isdir(path):
        raise ConfigError("is a folder, not a config file", path)
    try:
        # a regular file only: a FIFO or a device is refused, not waited on
        raw = read_regular(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError("no such file", path) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path) from None
    if raw is None:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES // 1024} KiB: not a sensor config", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"not valid TOML: line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x})",
                          path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path) from None
    except RecursionError:
        raise ConfigError("not valid TOML: nested too deeply", path) from None
    return parse(data, path)


def _check(cfg: Config) -> list[str]:
    """Checks that span keys (each field's own type and range were checked while decoding)."""
    out: list[str] = []
    s = cfg.sensor
    if 0 < s.heartbeat_s < MIN_HEARTBEAT_S:
        out.append(f"sensor.heartbeat_s: 0 (off) or at least {MIN_HEARTBEAT_S} s, got {s.heartbeat_s}")
    if any(ord(c) < 32 for c in s.hostname) or len(s.hostname) > 255:
        out.append("sensor.hostname: at most 255 characters, no control characters")
    if 0 < s.cpu_limit_percent < 1:
        out.append(f"sensor.cpu_limit_percent: 0 (no limit) or at least 1, got {s.cpu_limit_percent}")
    if 0 < s.memory_limit_mb < MIN_MEMORY_MB:
        out.append(f"sensor.memory_limit_mb: 0 (no limit) or at least {MIN_MEMORY_MB}, "
                   f"got {s.memory_limit_mb}")
    u = cfg.rules.update
    if u.url and not u.url.lower().startswith("https://"):
        out.append("rules.update.url: must be https:// (rules decide what the sensor detects)")
    e = cfg.source.etw
    if e.max_buffers < e.min_buffers:
        out.append(f"source.etw.max_buffers: must be >= min_buffers ({e.min_buffers})")
    d = cfg.delivery
    if d.backoff_cap_s < d.backoff_base_s:
        out.append("delivery.backoff_cap_s: must be >= backoff_base_s")
    from ..detect.noise import EXCLUSION_FIELDS, MODIFIERS
    for i, ex in enumerate(cfg.exclusions):
        if not ex.match:
            out.append(f"exclusions[{i}].match: needs at least one field pattern")
        for key in ex.match:
            name, _, mod = key.partition("|")
            if name not in EXCLUSION_FIELDS:
                out.append(f"exclusions[{i}].match.{key}: unknown field "
                           f"(known: {', '.join(sorted(EXCLUSION_FIELDS))})")
            elif mod not in MODIFIERS:
                out.append(f"exclusions[{i}].match.{key}: unknown modifier {mod!r}")
    out += _check_output(cfg.output)
    return out


def output_format(o: OutputSection) -> str | None:
    """The canonical format name, or None when the configured one is unknown."""
    return USER_FORMATS.get(o.format.lower())


def _check_output(o: OutputSection) -> list[str]:
    out: list[str] = []
    fmt = output_format(o)
    if fmt is None:
        return [f"output.format: must be one of {', '.join(sorted(set(USER_FORMATS.values())))}, "
                f"got {o.format!r}"]
    if fmt in HTTP_FORMATS:
        if not o.url:
            out.append(f"output.url: format {fmt} sends alerts over HTTPS and needs a url")
        has_token = bool(o.token or o.token_env or o.token_file)
        if fmt == "splunk_hec" and not has_token:
            out.append("output.token: Splunk HEC needs a token (token_env = \"VAR\", "
                       "token_file = \"file\" or token = \"...\")")
        if fmt in ("ecs", "elasticsearch") and not (has_token or o.client_cert):
            out.append(f"output.token: format {fmt} needs a token (token_env, token_file, token) "
                       f"or a client certificate (client_cert, client_key): the sensor does not "
                       f"send alerts to a receiver that accepts anyone")
        if fmt == "webhook" and not (o.hmac_secret or o.hmac_secret_env or o.hmac_secret_file):
            out.append("output.hmac_secret: a webhook needs the secret its requests are signed "
                       "with (hmac_secret_env, hmac_secret_file or hmac_secret)")
    if fmt == "syslog":
        if not o.url:
            out.append("output.url: format syslog needs a url (tls://collector:6514)")
        from ..deliver.syslog import FACILITIES
        if o.syslog_facility and o.syslog_facility not in FACILITIES:
            out.append(f"output.syslog_facility: must be one of {', '.join(FACILITIES)}")
        if any(not 33 <= ord(c) <= 126 for c in o.syslog_app_name) or len(o.syslog_app_name) > 48:
            out.append("output.syslog_app_name: at most 48 printable characters, no spaces")
    for name, value in o.headers.items():
        if not _TOKEN_RE.fullmatch(name):
            out.append(f"output.headers.{name}: not a valid HTTP header name")
        if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
            out.append(f"output.headers.{name}: the value holds a line break or control character")
        if name.lower() in ("authorization", "content-type", "content-encoding", "content-length",
                            "host", "idempotency-key"):
            out.append(f"output.headers.{name}: set by the sensor itself (use token / the format)")
    if o.auth_scheme and not _TOKEN_RE.fullmatch(o.auth_scheme):
        out.append("output.auth_scheme: must be one word (like Bearer)")
    if o.signature_header and not _TOKEN_RE.fullmatch(o.signature_header):
        out.append("output.signature_header: not a valid HTTP header name")
    for key in ("token", "hmac_secret"):
        if any(ord(c) < 32 or ord(c) == 127 for c in getattr(o, key)):
            out.append(f"output.{key}: holds a line break or control character")
    return out


def _resolve_paths(cfg: Config, base: str) -> list[str]:
    errors: list[str] = []

    def fix(p: str, key: str) -> str:
        if not p:
            return p
        p = os.path.expandvars(os.path.expanduser(p))
        m = _UNSET_VAR.search(p)
        if m:
            errors.append(f"{key}: names the environment variable {m.group(1).strip('{}')}, "
                          f"which is not set")
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    s = cfg.sensor
    s.data_dir = fix(s.data_dir, "sensor.data_dir") or default_data_dir()
    s.status_file = fix(s.status_file, "sensor.status_file") or os.path.join(s.data_dir, "status.json")
    cfg.logging.file = fix(cfg.logging.file, "logging.file")
    cfg.source.replay.paths = [fix(p, f"source.replay.paths[{i}]")
                               for i, p in enumerate(cfg.source.replay.paths)]
    cfg.rules.paths = [fix(p, f"rules.paths[{i}]") for i, p in enumerate(cfg.rules.paths)]
    for i, k in enumerate(cfg.rules.trusted_keys):
        k.file = fix(k.file, f"rules.trusted_keys[{i}].file")
    u = cfg.rules.update
    for key in ("ca_file", "client_cert", "client_key", "token_file"):
        setattr(u, key, fix(getattr(u, key), f"rules.update.{key}"))
    cfg.rules.placeholders = fix(cfg.rules.placeholders, "rules.placeholders")
    cfg.correlation.state_file = fix(cfg.correlation.state_file, "correlation.state_file") or \
        os.path.join(s.data_dir, "correlation-state.json")
    cfg.enrich.pe.path_map = {k: fix(v, f"enrich.pe.path_map.{k}")
                              for k, v in cfg.enrich.pe.path_map.items()}
    cfg.spool.path = fix(cfg.spool.path, "spool.path") or os.path.join(s.data_dir, "spool.sqlite")
    o = cfg.output
    for key in ("path", "token_file", "hmac_secret_file", "ca_file", "client_cert", "client_key"):
        setattr(o, key, fix(getattr(o, key), f"output.{key}"))
    o.url = os.path.expandvars(o.url)
    m = _UNSET_VAR.search(o.url)
    if m:
        errors.append(f"output.url: names the environment variable {m.group(1).strip('{}')}, "
                      f"which is not set")
    if output_format(o) == "jsonl" and not o.path:
        o.path = os.path.join(s.data_dir, "alerts.jsonl")
    return errors
