"""Build the running sensor from a configuration (used by ``run``, ``config test``, tests, demo)."""
from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from .config import Config, ConfigError

log = logging.getLogger("sensor")


@dataclass
class Parts:
    """Everything ``run`` starts, built and checked before anything starts."""

    config: Config
    rules: list
    rule_problems: list = field(default_factory=list)
    source: Any = None
    enricher: Any = None
    spool: Any = None
    output: Any = None
    forwarder: Any = None
    exclusions: Any = None
    throttle: Any = None
    warnings: list = field(default_factory=list)


def setup_logging(cfg: Config, stream=None) -> None:
    """Log to stderr (and a rotating file, and on Windows the Event Log, when configured)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(getattr(logging, cfg.logging.level.upper()))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(fmt)
    root.addHandler(h)
    if cfg.logging.file:
        os.makedirs(os.path.dirname(cfg.logging.file) or ".", exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(cfg.logging.file, maxBytes=cfg.logging.max_bytes,
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
    from ..detect.loader import load_rules as _load
    report = _load(cfg.rules.paths, builtin=cfg.rules.builtin)
    if report.not_applicable:
        log.info("%d rule(s) not applicable to process starts (see `etw-sensor rules validate`)",
                 len(report.not_applicable))
    return report.rules, report.problems()


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
        return ReplaySource(r.paths, speed=r.speed or None, loop=r.loop, block=r.block, preload=r.preload)
    if sys.platform != "win32":
        raise ConfigError(f"{cfg.path}: source.kind: 'etw' needs Windows; use 'replay' here")
    from ..sources.etw import EtwSource
    from ..sources.etw_windows import platform_parts
    return EtwSource(etw_config(cfg), platform=platform_parts)


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
                    computer=cfg.sensor.hostname or socket.gethostname())
    try:
        out.session.validate()
        out.logger.validate()
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: source.etw: {exc}") from None
    return out


def build(cfg: Config, *, with_source: bool = True, with_delivery: bool = True) -> Parts:
    """Build (and so check) every part; raises ConfigError naming the bad key."""
    from ..detect.noise import Exclusion, Exclusions, Throttle
    from ..detect.matcher import create

    rules, problems = load_rules(cfg)
    if not rules:
        raise ConfigError(f"{cfg.path}: rules: no rules to run (builtin = false and no paths)")
    parts = Parts(config=cfg, rules=rules, rule_problems=problems)
    engine = None if cfg.rules.engine == "auto" else cfg.rules.engine
    try:
        create(rules[:1], engine)
    except ValueError as exc:
        raise ConfigError(f"{cfg.path}: rules.engine: {exc}") from None
    if cfg.exclusions:
        try:
            parts.exclusions = Exclusions(
                [Exclusion(name=e.name, rules=e.rules, fields=e.match) for e in cfg.exclusions],
                lambda rs: create(rs, engine))
        except ValueError as exc:
            raise ConfigError(f"{cfg.path}: exclusions: {exc}") from None
    if cfg.throttle.window_s > 0:
        parts.throttle = Throttle(cfg.throttle.window_s)
    parts.enricher = _make_enricher(cfg, _pe_cache(cfg))
    if with_delivery:
        from ..deliver.forwarder import DeliveryConfig, Forwarder
        from ..deliver.outputs import build_output
        from ..deliver.tls import ConfigError as OutputConfigError
        from ..deliver.spool import Spool, SpoolError
        try:
            parts.output = build_output(cfg.output.options())
        except OutputConfigError as exc:
            raise ConfigError(f"{cfg.path}: output: {exc}") from None
        if cfg.output.insecure_skip_verify:
            parts.warnings.append("output.insecure_skip_verify is set: the receiver's TLS "
                                  "certificate is NOT verified")
        try:
            parts.spool = Spool(cfg.spool.path, max_bytes=int(cfg.spool.max_mb * 1024 * 1024),
                                max_age=cfg.spool.max_age_days * 86400,
                                dead_max_rows=cfg.spool.dead_letter_max)
        except (SpoolError, OSError) as exc:
            raise ConfigError(f"{cfg.path}: spool.path: {exc}") from None
        d = cfg.delivery
        dc = DeliveryConfig(batch_size=d.batch_size, batch_max_bytes=d.batch_max_kb * 1024,
                            linger=d.batch_wait_ms / 1000.0, concurrency=d.concurrency,
                            backoff_base=d.backoff_base_s, backoff_cap=d.backoff_cap_s,
                            park_interval=d.park_interval_s)
        parts.forwarder = Forwarder(parts.spool, parts.output, dc)
    if with_source:
        parts.source = build_source(cfg)
    return parts


def _make_enricher(cfg: Config, cache):
    from ..enrich.enricher import Enricher
    hostname = cfg.sensor.hostname or socket.gethostname()
    has = cache is not None  # (an empty cache is falsy: it has a length)
    return Enricher(pe_lookup=cache.lookup if has else None,
                    path_map=cfg.enrich.pe.path_map or None,
                    hostname=hostname if cfg.source.kind == "etw" else None,
                    pe_stats=cache.stats if has else None,
                    pe_batch=cache.batch if has else None)


def prepare(cfg: Config):
    """Build every part from ``cfg``, log what the operator must know, return the pipeline.

    Shared by ``etw-sensor run`` and the Windows service, so both report the same
    warnings (insecure TLS, rejected rules, rule-load caveats).
    """
    parts = build(cfg)
    for w in parts.warnings:
        log.warning(w)
    for p in parts.rule_problems:
        log.error(p)
    return make_pipeline(parts)


def alert_log_line(alert: dict) -> str:
    """One readable line for an alert (the log and the Windows Event Log)."""
    rule = alert.get("rule") or {}
    return (f"ALERT [{rule.get('level', '?')}] {rule.get('title', '?')} ({rule.get('id', '?')}): "
            f"{alert.get('PROCESSNAME')} | {alert.get('COMMANDLINE')} | parent "
            f"{alert.get('PARENTPROCESSNAME')} | user {alert.get('USERNAME')} | host "
            f"{alert.get('HOSTNAME')} | alert id {alert.get('id')}")


_alert_log = logging.getLogger("sensor.alerts")


def _log_alert(alert: dict) -> None:
    _alert_log.warning("%s", alert_log_line(alert))


def make_pipeline(parts: Parts):
    """The pipeline over built parts."""
    from .pipeline import Pipeline
    cfg = parts.config
    engine = None if cfg.rules.engine == "auto" else cfg.rules.engine
    return Pipeline(source=parts.source, rules=parts.rules, spool=parts.spool,
                    forwarder=parts.forwarder, enricher=parts.enricher,
                    exclusions=parts.exclusions, throttle=parts.throttle, engine=engine,
                    queue_size=cfg.sensor.queue_size, batch_size=cfg.sensor.batch_size,
                    heartbeat_interval=cfg.sensor.heartbeat_s,
                    status_file=cfg.sensor.status_file,
                    alert_hook=_log_alert if cfg.logging.alerts else None,
                    info={"host": cfg.sensor.hostname or socket.gethostname(),
                          "config": cfg.path})
