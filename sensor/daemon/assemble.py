"""Check and build the running sensor from a configuration.

:func:`validate` is the one check ``etw-sensor run``, the Windows service and
``etw-sensor config test`` share: it finds every problem (each with its key path) and
creates nothing. :func:`build` then makes the parts (spool, output, source) from a
configuration that passed, and :func:`prepare` does both for ``run`` and the service.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .._files import exposure, open_private, private_dir
from .config import DEFAULTS_NAME, HTTP_FORMATS, Config, ConfigError, output_format

log = logging.getLogger("sensor")


@dataclass
class Validation:
    """What :func:`validate` found: errors (refuse to start), warnings, and the loaded rules."""

    config: Config
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rules: list = field(default_factory=list)
    rule_problems: list[str] = field(default_factory=list)
    rule_packs: list[dict] = field(default_factory=list)
    correlations: list = field(default_factory=list)   # Sigma correlation rules (loaded)
    not_applicable: int = 0
    output_name: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class Parts:
    """Everything ``run`` starts, built from a configuration that passed :func:`validate`."""

    config: Config
    rules: list
    rule_problems: list = field(default_factory=list)
    rule_packs: list = field(default_factory=list)
    source: Any = None
    enricher: Any = None
    spool: Any = None
    output: Any = None
    forwarder: Any = None
    exclusions: Any = None
    throttle: Any = None
    correlator: Any = None
    warnings: list = field(default_factory=list)
    caps: dict = field(default_factory=dict)     # sizes set by [sensor] memory_limit_mb


# -- validation -------------------------------------------------------------------------------

def _writable(path: str, *, folder: bool) -> str | None:
    """Why the sensor could not create or write ``path`` (None when it could); creates nothing."""
    if os.path.lexists(path):
        if folder and not os.path.isdir(path):
            return f"{path} exists and is not a folder"
        if not folder and not os.path.isfile(path):
            return f"{path} exists and is not a regular file"
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            return f"{path}: no permission to write"
        return None
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.lexists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        return f"cannot create {path}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: no permission to write in {parent}"
    return None


def _is_elevated() -> bool | None:
    """Whether this Windows process runs elevated (None off Windows or when unknown)."""
    if sys.platform != "win32":
        return None
    from .platform_windows import is_elevated
    return is_elevated()


def validate(cfg: Config, *, allow_readable_config: bool = False, platform: str = sys.platform,
             elevated: Callable[[], bool | None] = _is_elevated,
             replay_inputs_given: bool = False) -> Validation:
    """Every check ``run`` makes before it starts, minus starting: nothing is created.

    Each problem is an error naming its key (the start is refused, exit 2); things that
    work but that an operator must know are warnings. ``replay_inputs_given``: the replay
    paths came from the command line (``run --replay``); like ``scan``'s, a missing one is an
    input error of the run (reported, exit 1), not a configuration error.
    """
    v = Validation(config=cfg)
    err = v.errors.append
    if cfg.path and cfg.path != DEFAULTS_NAME and os.path.isfile(cfg.path):
        why = exposure(cfg.path, allow_readable=allow_readable_config)
        if why:
            err(f"config file: {why}; it may hold secrets and decides where alerts go"
                + ("" if "change" in why else " (--allow-readable-config accepts a readable one)"))
    _check_platform(cfg, v, platform, elevated, replay_inputs_given)
    _check_rules(cfg, v)
    _check_output(cfg, v)
    _check_places(cfg, v)
    return v


def _check_platform(cfg: Config, v: Validation, platform: str, elevated, cli_inputs: bool) -> None:
    if cfg.source.kind == "etw":
        if platform != "win32":
            v.errors.append("source.kind: 'etw' needs Windows; use 'replay' here")
        else:
            try:
                etw_config(cfg)
            except ConfigError as exc:
                v.errors.extend(exc.errors)
            if elevated() is False:
                v.errors.append("source.kind: live ETW needs Administrator or SYSTEM rights "
                                "(run elevated, or install the service)")
    else:
        if not cfg.source.replay.paths:
            v.errors.append("source.replay.paths: a replay source needs at least one path"
                            + (" (live ETW needs Windows)" if platform != "win32" else ""))
        for i, p in enumerate(cfg.source.replay.paths if not cli_inputs else ()):
            if not os.path.exists(p):
                v.errors.append(f"source.replay.paths[{i}]: {p}: no such file or folder")
            elif not os.access(p, os.R_OK):
                v.errors.append(f"source.replay.paths[{i}]: {p}: no permission to read")
    for key, p in cfg.enrich.pe.path_map.items():
        if not os.path.isdir(p):
            v.errors.append(f"enrich.pe.path_map.{key}: {p}: no such folder")


def _check_rules(cfg: Config, v: Validation) -> None:
    from ..detect.matcher import create
    from .reload import load_configured
    loaded = load_configured(cfg)
    v.rules = loaded.rules
    v.rule_problems = loaded.problems
    v.rule_packs = loaded.packs
    v.correlations = list(loaded.correlations)
    v.not_applicable = loaded.not_applicable
    v.errors += loaded.errors
    v.warnings += loaded.warnings
    if not v.rules:
        return
    engine = None if cfg.rules.engine == "auto" else cfg.rules.engine
    try:
        create(v.rules[:1], engine)
    except ValueError as exc:
        v.errors.append(f"rules.engine: {exc}")
    if cfg.exclusions:
        from ..detect.noise import Exclusion, Exclusions
        try:
            Exclusions([Exclusion(name=e.name, rules=e.rules, fields=e.match) for e in cfg.exclusions],
                       lambda rs: create(rs, engine))
        except ValueError as exc:
            v.errors.append(f"exclusions: {exc}")


def _check_output(cfg: Config, v: Validation) -> None:
    from ..deliver.outputs import build_output
    from ..deliver.tls import ConfigError as OutputConfigError
    o = cfg.output
    fmt = output_format(o)
    v.output_name = fmt or o.format
    for key in ("token_file", "hmac_secret_file", "client_key"):
        p = getattr(o, key)
        if p and os.path.isfile(p):
            why = exposure(p)
            if why:
                v.errors.append(f"output.{key}: {why}: a secret must be readable by the sensor only")
    try:
        output = build_output(o.options())
    except (OutputConfigError, ValueError, OSError) as exc:
        v.errors.append(f"output: {exc}")
        return
    try:
        for secret in (getattr(output, "token", None), getattr(output, "hmac_secret", None)):
            if secret and any(ord(c) < 32 or ord(c) == 127 for c in secret.reveal()):
                v.errors.append("output: the token or secret holds a line break or control character")
        if fmt in HTTP_FORMATS + ("syslog",):
            if o.insecure_skip_verify:
                v.warnings.append("output.insecure_skip_verify is set: the receiver's TLS "
                                  "certificate is NOT verified")
            if (o.pool_maxsize or 2) < cfg.delivery.concurrency:
                v.warnings.append("output.pool_maxsize is below delivery.concurrency: "
                                  "connections are opened and closed per request")
    finally:
        output.close()


def _check_places(cfg: Config, v: Validation) -> None:
    """Every folder and file the sensor will write: creatable or writable, created by nobody."""
    places = [("sensor.data_dir", cfg.sensor.data_dir, True),
              ("sensor.status_file", cfg.sensor.status_file, False),
              ("spool.path", cfg.spool.path, False)]
    if cfg.logging.file:
        places.append(("logging.file", cfg.logging.file, False))
    if output_format(cfg.output) == "jsonl":
        places.append(("output.path", cfg.output.path, False))
    if v.correlations and cfg.correlation.persist:
        places.append(("correlation.state_file", cfg.correlation.state_file, False))
    for key, path, folder in places:
        why = _writable(path, folder=folder)
        if why:
            v.errors.append(f"{key}: {why}")


# -- building ---------------------------------------------------------------------------------

class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file created 0600 (log lines carry command lines and users)."""

    def _open(self):
        return open_private(self.baseFilename, self.mode, encoding=self.encoding)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (not the one at setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(cfg: Config, stream=None) -> None:
    """Log to stderr (and a rotating file, and on Windows the Event Log, when configured)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        if isinstance(h, logging.FileHandler):   # a log file of an earlier setup: close it
            h.close()
    root.setLevel(getattr(logging, cfg.logging.level.upper()))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    h = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    h.setFormatter(fmt)
    root.addHandler(h)
    if cfg.logging.file:
        private_dir(os.path.dirname(cfg.logging.file) or ".")
        fh = _PrivateRotatingFileHandler(cfg.logging.file, maxBytes=cfg.logging.max_bytes,
                                         backupCount=cfg.logging.backups, encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if cfg.logging.event_log and sys.platform == "win32":
        from .eventlog_windows import event_log_handler
        eh = event_log_handler()
        if eh is not None:
            root.addHandler(eh)


def load_rules(cfg: Config) -> tuple[list, list]:
    """The configured rules and the problems found loading them."""
    from .reload import load_configured
    loaded = load_configured(cfg)
    return loaded.rules, loaded.problems + [e for e in loaded.errors if not e.startswith("rules: ")]


def _pe_cache(cfg: Config):
    """The PE version-info cache, or None when PE enrichment is disabled."""
    if not cfg.enrich.pe.enabled:
        return None
    from ..enrich.pe import VersionInfoCache
    return VersionInfoCache(maxsize=cfg.enrich.pe.cache_size)


def build_source(cfg: Config):
    """The configured event source (replay anywhere, ETW on Windows)."""
    if cfg.source.kind == "replay":
        from ..sources.replay import ReplaySource
        r = cfg.source.replay
        return ReplaySource(r.paths, speed=r.speed or None, loop=r.loop, block=r.block, preload=r.preload,
                            max_line_bytes=r.max_line_bytes)
    if sys.platform != "win32":
        raise ConfigError("source.kind: 'etw' needs Windows; use 'replay' here", cfg.path)
    from ..sources.etw import EtwSource
    from ..sources.etw_windows import platform_parts
    return EtwSource(etw_config(cfg), platform=platform_parts, tree_store=tree_store(cfg))


def tree_store(cfg: Config):
    """Where the ETW source saves its process table, or None when ``save_tree`` is off."""
    if not cfg.source.etw.save_tree:
        return None
    from .tree_store import TreeStore
    return TreeStore(os.path.join(cfg.sensor.data_dir, "process_tree.json"))


def etw_config(cfg: Config):
    """The ETW source settings from the ``[source.etw]`` table."""
    from ..sources.etw import EtwConfig
    from ..sources.etw_session import SessionSpec, instance_session_name, system_logger_spec
    e = cfg.source.etw
    common = dict(buffer_kb=e.buffer_kb, min_buffers=e.min_buffers, max_buffers=e.max_buffers,
                  flush_interval=e.flush_ms / 1000.0)
    # One session name per instance (the data folder): two sensors never stop each other's.
    name = instance_session_name(e.session_name, cfg.sensor.data_dir)
    out = EtwConfig(session=SessionSpec(name=name, capture_state=e.rundown, **common),
                    system_logger=e.system_logger,
                    logger=system_logger_spec(name=name + "-syslogger", **common),
                    queue_size=cfg.sensor.queue_size, table_max=e.process_table_size,
                    backfill=e.backfill, watchdog_interval=e.query_interval_s,
                    computer=cfg.sensor.hostname or socket.gethostname(),
                    tree_save_interval=e.save_tree_interval_s)
    try:
        out.session.validate()
        out.logger.validate()
    except ValueError as exc:
        raise ConfigError(f"source.etw: {exc}", cfg.path) from None
    return out


def instance_lock(cfg: Config):
    """The lock that makes this process the one sensor of its data folder (not yet taken)."""
    from .lock import InstanceLock, PosixLocking, lock_paths
    if sys.platform == "win32":
        from .lock_windows import WindowsLocking
        locking = WindowsLocking()
    else:
        locking = PosixLocking()
    return InstanceLock(lock_paths(cfg.sensor.data_dir, cfg.spool.path), locking)


def build(cfg: Config, checked: Validation | None = None, *, with_source: bool = True,
          with_delivery: bool = True, owner: bool = False) -> Parts:
    """Make every part of a configuration that passed :func:`validate` (done here if not given).

    Creates the spool (and its folder); raises ConfigError when something still fails.
    ``owner``: this process holds the instance lock (:func:`instance_lock`), so it may salvage
    a damaged spool.
    """
    from ..detect.noise import Exclusion, Exclusions, Throttle
    from ..detect.matcher import create

    if checked is None:
        checked = validate(cfg)
    if checked.errors:
        raise ConfigError(checked.errors, cfg.path)
    from .budget import apply_memory_caps
    parts = Parts(config=cfg, rules=checked.rules, rule_problems=checked.rule_problems,
                  rule_packs=checked.rule_packs, warnings=list(checked.warnings))
    # [sensor] memory_limit_mb sizes the tables (the queue by what it holds: raw ETW records,
    # events, or both with correlations)
    parts.caps = apply_memory_caps(cfg, correlations=bool(checked.correlations))
    if checked.correlations:
        from ..detect.correlate import CorrelationEngine
        c = cfg.correlation
        parts.correlator = CorrelationEngine(
            checked.rules, checked.correlations, lateness_ms=int(c.lateness_s * 1000),
            max_state=c.max_state, max_state_mb=c.max_state_mb, max_evidence=c.max_evidence)
    engine = None if cfg.rules.engine == "auto" else cfg.rules.engine
    if cfg.exclusions:
        parts.exclusions = Exclusions(
            [Exclusion(name=e.name, rules=e.rules, fields=e.match) for e in cfg.exclusions],
            lambda rs: create(rs, engine))
    if cfg.throttle.window_s > 0:
        parts.throttle = Throttle(cfg.throttle.window_s)
    parts.enricher = _make_enricher(cfg, _pe_cache(cfg), _hash_cache(cfg, parts.rules))
    if with_delivery:
        from ..deliver.forwarder import DeliveryConfig, Forwarder
        from ..deliver.outputs import build_output
        from ..deliver.tls import ConfigError as OutputConfigError
        from ..deliver.spool import Spool, SpoolError
        try:
            parts.output = build_output(cfg.output.options())
        except (OutputConfigError, ValueError) as exc:
            raise ConfigError(f"output: {exc}", cfg.path) from None
        try:
            private_dir(cfg.sensor.data_dir)
            parts.spool = Spool(cfg.spool.path, max_bytes=int(cfg.spool.max_mb * 1024 * 1024),
                                max_age=cfg.spool.max_age_days * 86400,
                                dead_max_rows=cfg.spool.dead_letter_max, owner=owner,
                                sync=cfg.spool.sync)
        except (SpoolError, OSError, ValueError) as exc:
            parts.output.close()
            raise ConfigError(f"spool.path: {exc}", cfg.path) from None
        d = cfg.delivery
        dc = DeliveryConfig(batch_size=d.batch_size, batch_max_bytes=d.batch_max_kb * 1024,
                            linger=d.batch_wait_ms / 1000.0, concurrency=d.concurrency,
                            backoff_base=d.backoff_base_s, backoff_cap=d.backoff_cap_s,
                            park_interval=d.park_interval_s)
        parts.forwarder = Forwarder(parts.spool, parts.output, dc)
    if with_source:
        parts.source = build_source(cfg)
    return parts


def _hash_cache(cfg: Config, rules):
    """The Hashes cache when a loaded rule reads Hashes or alerts must carry them, else None."""
    h = cfg.enrich.hashes
    if not h.in_alerts and not any("Hashes" in r.fields for r in rules):
        return None
    from ..enrich.hashes import HashCache
    return HashCache(h.algorithms, max_size=int(h.max_file_mb * (1 << 20)), maxsize=h.cache_size)


def _make_enricher(cfg: Config, cache, hash_cache=None):
    from ..enrich.enricher import Enricher
    hostname = cfg.sensor.hostname or socket.gethostname()
    has = cache is not None  # (an empty cache is falsy: it has a length)
    return Enricher(pe_lookup=cache.lookup if has else None,
                    path_map=cfg.enrich.pe.path_map or None,
                    hostname=hostname if cfg.source.kind == "etw" else None,
                    pe_stats=cache.stats if has else None,
                    pe_batch=cache.batch if has else None,
                    hash_lookup=hash_cache.lookup if hash_cache is not None else None,
                    hash_stats=hash_cache.stats if hash_cache is not None else None)


def prepare(cfg: Config, checked: Validation | None = None, owner: bool = False):
    """Build every part of a checked ``cfg``, log what the operator must know, return the
    pipeline. Shared by ``etw-sensor run`` and the Windows service. ``owner``: the caller holds
    the instance lock (:func:`instance_lock`)."""
    parts = build(cfg, checked, owner=owner)
    for w in parts.warnings:
        log.warning(w)
    if parts.correlator is not None:
        from ..detect.correlate import tune_gc
        tune_gc()
    pipeline = make_pipeline(parts)
    attach_services(pipeline, cfg, parts)
    return pipeline


def _dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def alert_log_line(alert: dict) -> str:
    """One readable line for an alert (the log and the Windows Event Log); unknown values: ``-``."""
    rule = alert.get("rule") or {}
    return (f"ALERT [{_dash(rule.get('level'))}] {_dash(rule.get('title'))} ({_dash(rule.get('id'))}): "
            f"{_dash(alert.get('PROCESSNAME'))} | {_dash(alert.get('COMMANDLINE'))} | parent "
            f"{_dash(alert.get('PARENTPROCESSNAME'))} | user {_dash(alert.get('USERNAME'))} | host "
            f"{_dash(alert.get('HOSTNAME'))} | alert id {_dash(alert.get('id'))}")


_alert_log = logging.getLogger("sensor.alerts")


def _log_alert(alert: dict) -> None:
    # The record goes straight to the handlers: ``warning()`` would first look up its caller
    # (a walk up the stack, per alert) for a file name and line the log format never shows.
    if _alert_log.isEnabledFor(logging.WARNING):
        _alert_log.handle(_alert_log.makeRecord(_alert_log.name, logging.WARNING, "(alert)", 0,
                                                alert_log_line(alert), (), None, "alert"))


def make_pipeline(parts: Parts):
    """The pipeline over built parts."""
    from .pipeline import Pipeline
    cfg = parts.config
    engine = None if cfg.rules.engine == "auto" else cfg.rules.engine
    return Pipeline(source=parts.source, rules=parts.rules, spool=parts.spool,
                    forwarder=parts.forwarder, enricher=parts.enricher,
                    exclusions=parts.exclusions, throttle=parts.throttle, engine=engine,
                    queue_size=cfg.sensor.queue_size, batch_size=cfg.sensor.batch_size,
                    commit_delay=cfg.sensor.commit_delay_s,
                    heartbeat_interval=cfg.sensor.heartbeat_s,
                    status_file=cfg.sensor.status_file,
                    alert_hook=_log_alert if cfg.logging.alerts else None,
                    rule_problems=parts.rule_problems, rules_on_error=cfg.rules.on_error,
                    rule_packs=parts.rule_packs,
                    info={"host": cfg.sensor.hostname or socket.gethostname(),
                          "config": cfg.path},
                    correlator=parts.correlator,
                    correlation_state=(cfg.correlation.state_file
                                       if cfg.correlation.persist else None),
                    checkpoint_s=cfg.correlation.checkpoint_s,
                    idle_flush_s=cfg.correlation.lateness_s)


def attach_services(pipeline, cfg: Config, parts: Parts | None = None) -> list:
    """What runs beside the pipeline: the rule reloader (file watch, update URL), the local
    control channel and the CPU/memory budget. ``runner.serve`` starts and stops them."""
    from .reload import Reloader
    services: list = []
    budget = None
    if cfg.sensor.cpu_limit_percent or cfg.sensor.memory_limit_mb:
        from .budget import Budget
        budget = Budget(cfg.sensor.cpu_limit_percent, window=cfg.sensor.cpu_window_s,
                        memory_limit_mb=cfg.sensor.memory_limit_mb,
                        caps=parts.caps if parts is not None else {})
        budget.attach(pipeline)
        services.append(budget)

    def on_config(new: Config) -> None:
        pipeline.alert_hook = _log_alert if new.logging.alerts else None
        if budget is not None:
            budget.set_limit(new.sensor.cpu_limit_percent, new.sensor.cpu_window_s)

    reloader = Reloader(pipeline, cfg, on_config=on_config)
    services.append(reloader)
    pipeline.reloader = reloader
    if cfg.sensor.control:
        if sys.platform == "win32":
            from .control_windows import PipeControlServer
            server = PipeControlServer(cfg.sensor.data_dir, reloader)
        else:
            from .control import control_server
            server = control_server(cfg.sensor.data_dir, reloader)
        if server is not None:
            services.append(server)
    pipeline.services = services
    return services
