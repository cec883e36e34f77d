"""Rules that change without a restart: load, check and compile a new set off the hot path,
then hand it to the pipeline's worker, which swaps it in between two batches.

What asks for a reload: ``etw-sensor reload`` (the local control channel,
``sensor/daemon/control.py``), SIGHUP (POSIX), the Windows service's custom control code, a
change of the rule files seen by a cheap poll (:func:`stat_signature`), and a new pack at the
update URL (:class:`UpdatePoller`, ETag / If-Modified-Since, the TLS options of the output).

Fail closed: a reload whose rules do not all load (a rejected rule, a missing file, a pack
that is unsigned or signed with an unknown, expired or wrong key) while ``on_error = "fail"``,
or whose config file is invalid, changes nothing: the running set stays, the refusal is logged,
counted in the status and sent to the SIEM as a health alert
(``sensor-health-rules-reload-failed``). The config file is read again on every reload; the
keys that apply live (:data:`LIVE_KEYS`) are applied, every other changed key is reported as
needing a restart.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import stat as _stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from .._files import private_dir, write_atomic_private
from .config import DEFAULTS_NAME, Config, ConfigError, load as load_config
from .pipeline import RuleSet

log = logging.getLogger("sensor.reload")

# Config keys a reload applies (dotted prefixes); a change anywhere else needs a restart.
LIVE_KEYS = ("rules", "exclusions", "throttle", "logging.level", "logging.alerts",
             "sensor.cpu_limit_percent", "sensor.cpu_window_s")
MAX_WATCHED_FILES = 100_000
WATCH_CAPPED = ("<more rule files than the watch stats>",)    # the last entry when capped
UPDATE_PACK_NAME = "rules-update.pack"


# -- loading -----------------------------------------------------------------------------------

def update_pack_path(cfg: Config) -> str:
    """Where the pack fetched from ``[rules.update] url`` is kept (the data folder)."""
    return os.path.join(cfg.sensor.data_dir, UPDATE_PACK_NAME)


def rule_paths(cfg: Config) -> list[str]:
    """The configured rule paths, plus the last pack fetched from the update URL."""
    paths = list(cfg.rules.paths)
    if cfg.rules.update.url and os.path.isfile(update_pack_path(cfg)):
        paths.append(update_pack_path(cfg))
    return paths


def trust_for(cfg: Config):
    """The trusted keys of ``[rules] trusted_keys`` and the problems with them."""
    from ..detect.signing import trust_from_entries
    entries = [msgspec.to_builtins(k) | {"not_after": k.not_after} for k in cfg.rules.trusted_keys]
    return trust_from_entries(entries)


@dataclass
class Loaded:
    """A configured rule set, loaded and checked (not yet compiled)."""

    rules: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)    # rejected rules/files, bad signatures
    errors: list[str] = field(default_factory=list)      # refuse (start or reload)
    warnings: list[str] = field(default_factory=list)
    packs: list[dict] = field(default_factory=list)
    correlations: list = field(default_factory=list)     # Sigma correlations, references resolved
    not_applicable: int = 0


def load_configured(cfg: Config, reloading: bool = False,
                    cancelled: Callable[[], bool] | None = None) -> Loaded:
    """Load the rules ``cfg`` names (signatures checked when keys are trusted); the problems
    become errors under ``on_error = "fail"`` and warnings under ``"skip"``. Shared by the
    start-up check (``assemble.validate``) and every reload. ``cancelled``: see ``load_rules``
    (raises ``LoadCancelled``)."""
    from ..detect.loader import load_rules
    out = Loaded()
    trust, key_errors = trust_for(cfg)
    if key_errors:
        out.errors += key_errors
        return out
    placeholders = None
    if cfg.rules.placeholders:
        from ..detect.placeholders import PlaceholderError, load_placeholders
        try:
            placeholders = load_placeholders(cfg.rules.placeholders)
        except PlaceholderError as exc:
            out.errors.append(f"rules.placeholders: {exc}")
            return out
    report = load_rules(rule_paths(cfg), builtin=cfg.rules.builtin, trust=trust,
                        allow_backtracking=cfg.rules.allow_backtracking,
                        placeholders=placeholders, cancelled=cancelled)
    out.rules = report.rules
    out.correlations = list(report.correlations)
    out.problems = report.problems()
    out.packs = report.packs
    out.not_applicable = len(report.not_applicable)
    if out.problems:
        if cfg.rules.on_error == "fail":
            out.errors += [f"rules: {p}" for p in out.problems]
            out.errors.append(f"rules: {len(out.problems)} problem(s) above; the sensor does not "
                              f"{'swap in a rule set' if reloading else 'start'} without rules it "
                              f"was given (fix them, or set [rules] on_error = \"skip\" to "
                              f"{'accept one' if reloading else 'start'} without them)")
        else:
            out.warnings += [f"{p} (on_error = \"skip\": running without it)" for p in out.problems]
    if not out.rules and not out.problems:
        out.errors.append("rules: no rules to run (builtin = false and no rule loaded)")
    return out


def build_correlator(cfg: Config, loaded: Loaded):
    """The correlation engine for a loaded set (None without correlations); ``[correlation]``
    settings are the running ones (they need a restart). At the swap it takes over the windows
    of the running engine's unchanged correlations (``Pipeline._handover``)."""
    if not loaded.correlations:
        return None
    import gc
    from ..detect.correlate import GC_THRESHOLDS, CorrelationEngine, tune_gc
    if gc.get_threshold() != GC_THRESHOLDS:
        tune_gc()                      # the first set with correlations (as at start)
    c = cfg.correlation
    return CorrelationEngine(loaded.rules, loaded.correlations, lateness_ms=int(c.lateness_s * 1000),
                             max_state=c.max_state, max_state_mb=c.max_state_mb,
                             max_evidence=c.max_evidence)


def engine_of(cfg: Config) -> str | None:
    return None if cfg.rules.engine == "auto" else cfg.rules.engine


def build_exclusions(cfg: Config):
    if not cfg.exclusions:
        return None
    from ..detect.matcher import create
    from ..detect.noise import Exclusion, Exclusions
    engine = engine_of(cfg)
    return Exclusions([Exclusion(name=e.name, rules=e.rules, fields=e.match) for e in cfg.exclusions],
                      lambda rs: create(rs, engine))


# -- what changed in the config file ---------------------------------------------------------

def _flat(value: Any, prefix: str, out: dict) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs between two configs."""
    a: dict = {}
    b: dict = {}
    _flat({k: v for k, v in msgspec.to_builtins(old, enc_hook=str).items() if k != "path"}, "", a)
    _flat({k: v for k, v in msgspec.to_builtins(new, enc_hook=str).items() if k != "path"}, "", b)
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


_MISSING = object()


def is_live(key: str) -> bool:
    """Whether a reload applies a change of ``key`` (else it needs a restart)."""
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "[") for p in LIVE_KEYS)


def split_changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(keys applied live, keys that need a restart)."""
    keys = changed_keys(old, new)
    return [k for k in keys if is_live(k)], [k for k in keys if not is_live(k)]


# -- cheap change detection ------------------------------------------------------------------

def _entry(path: str, st: os.stat_result) -> tuple:
    return (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def stat_signature(paths) -> tuple:
    """What the rule files look like now, from ``stat`` alone: name, size, mtime, inode and
    ctime of every rule file (folders walked, at most :data:`MAX_WATCHED_FILES`; past them the
    last entry is :data:`WATCH_CAPPED`). Equal signatures: nothing to reload. No file is read."""
    from ..detect.loader import PACK_SUFFIX, YAML_SUFFIXES
    out: list[tuple] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((p, "missing"))
            continue
        if not _stat.S_ISDIR(st.st_mode):
            out.append(_entry(p, st))
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.lower().endswith(YAML_SUFFIXES + (PACK_SUFFIX,)):
                    continue
                if len(out) >= MAX_WATCHED_FILES:
                    return tuple(out) + (WATCH_CAPPED,)
                fp = os.path.join(root, name)
                try:
                    out.append(_entry(fp, os.stat(fp)))
                except OSError:
                    out.append((fp, "missing"))
    return tuple(out)


# -- the update URL ----------------------------------------------------------------------------

class UpdatePoller:
    """Polls ``[rules.update] url`` for a rule pack with ETag / If-Modified-Since.

    A new pack is checked (signature when keys are trusted, pack integrity) before it
    replaces the kept copy in the data folder (atomically, private); the caller then reloads.
    Size-capped (``max_mb``), one GET at a time, the output's TLS options (CA file, pin,
    client certificate, TLS 1.2+), an optional bearer token. Never raises.
    """

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time):
        from ..deliver.http import Aborter, safe_url
        u = cfg.rules.update
        self.cfg = cfg
        self.url = u.url
        self.safe_url = safe_url(u.url)
        self.dest = update_pack_path(cfg)
        self.meta_path = self.dest + ".meta"
        self.interval = u.interval_s
        self.max_bytes = int(u.max_mb * 1024 * 1024)
        self.clock = clock
        self.stats: dict[str, Any] = {"url": self.safe_url, "polls": 0, "updates": 0,
                                      "not_modified": 0, "failures": 0, "last_poll_at": None,
                                      "last_error": None, "etag": None}
        self._meta = self._read_meta()
        self.stats["etag"] = self._meta.get("etag")
        self._pool = None
        self._aborter = Aborter()
        self._path = "/"

    def _read_meta(self) -> dict:
        try:
            with open(self.meta_path, "rb") as fh:
                meta = json.loads(fh.read(65536))
            if isinstance(meta, dict) and meta.get("url") == self.url and os.path.isfile(self.dest):
                return {k: v for k, v in meta.items() if isinstance(v, str)}
        except (OSError, ValueError):
            pass
        return {}

    def _connect(self):
        from urllib.parse import urlsplit

        import urllib3

        from ..deliver.tls import TLSConfig, load_secret
        u = self.cfg.rules.update
        opts = {k: getattr(u, k) for k in ("ca_file", "pin_sha256", "client_cert", "client_key",
                                           "tls_min_version") if getattr(u, k)}
        tls = TLSConfig.from_options(opts)
        parts = urlsplit(self.url)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._token = load_secret({k: getattr(u, k) for k in ("token_env", "token_file")
                                   if getattr(u, k)}, "token")
        self._pool = urllib3.HTTPSConnectionPool(
            parts.hostname, parts.port or 443, ssl_context=tls.ssl_context(), maxsize=1,
            retries=False, timeout=urllib3.Timeout(connect=min(10.0, u.timeout_s), read=u.timeout_s))
        self._aborter.track(self._pool)     # close() ends a fetch in flight (a stop)

    def _error(self, message: str) -> str:
        self.stats["failures"] += 1
        self.stats["last_error"] = message[:300]
        log.warning("rule update from %s failed: %s (the current rules keep running)",
                    self.safe_url, message)
        return "error"

    def poll(self) -> str:
        """One poll: ``updated`` (a new, checked pack is in place), ``not_modified`` or ``error``."""
        from ..deliver.http import TransportFailure, classify_exception, read_bounded
        self.stats["polls"] += 1
        self.stats["last_poll_at"] = self.clock()
        try:
            if self._pool is None:
                self._connect()
            headers = {"User-Agent": "etw-sensor", "Accept-Encoding": "identity"}
            if self._meta.get("etag"):
                headers["If-None-Match"] = self._meta["etag"]
            if self._meta.get("last_modified"):
                headers["If-Modified-Since"] = self._meta["last_modified"]
            if self._token:
                headers["Authorization"] = f"Bearer {self._token.reveal()}"
            resp = self._pool.urlopen("GET", self._path, headers=headers, redirect=False,
                                      preload_content=False)
            try:
                if resp.status == 304:
                    self.stats["not_modified"] += 1
                    self.stats["last_error"] = None
                    return "not_modified"
                if resp.status != 200:
                    return self._error(f"HTTP {resp.status}")
                # bounded in size and, as a whole, in time: a server sending the pack a byte
                # at a time must not hold this thread (it also runs the file-watch reloads)
                data = read_bounded(resp, self.max_bytes, self.cfg.rules.update.timeout_s,
                                    decode_content=False)
                if data is None:
                    return self._error(f"larger than rules.update.max_mb ({self.max_bytes} bytes)")
                etag = resp.headers.get("ETag")
                modified = resp.headers.get("Last-Modified")
            finally:
                resp.release_conn()
        except ConfigError as exc:
            return self._error(str(exc))
        except TransportFailure as exc:
            return self._error(exc.message)
        except Exception as exc:  # noqa: BLE001 - network, TLS, configuration: never raise
            from ..deliver.tls import ConfigError as TlsConfigError
            if isinstance(exc, TlsConfigError):
                return self._error(str(exc))
            return self._error(classify_exception(exc)[1])
        problem = self._check(data)
        if problem:
            return self._error(f"the fetched pack is refused: {problem}")
        if os.path.isfile(self.dest):
            try:
                with open(self.dest, "rb") as fh:
                    if fh.read(self.max_bytes + 1) == data:   # same pack, new validators
                        self._save_meta(etag, modified)
                        self.stats["not_modified"] += 1
                        self.stats["last_error"] = None
                        return "not_modified"
            except OSError:
                pass
        try:
            _write_atomic(self.dest, data)
            self._save_meta(etag, modified)
        except OSError as exc:
            return self._error(f"cannot keep the pack at {self.dest}: {exc.strerror or exc}")
        self.stats["updates"] += 1
        self.stats["last_error"] = None
        log.info("rule update: new pack from %s (%d bytes)", self.safe_url, len(data))
        return "updated"

    def _check(self, data: bytes) -> str | None:
        from ..detect.ir import RuleError
        from ..detect.pack import decode_pack
        from ..detect.signing import open_pack
        trust, errors = trust_for(self.cfg)
        if errors:
            return "; ".join(errors)
        try:
            body, _sig = open_pack(data, self.safe_url, trust)
            decode_pack(body, self.safe_url)
        except RuleError as exc:
            return exc.message
        return None

    def _save_meta(self, etag: str | None, modified: str | None) -> None:
        self._meta = {"url": self.url, **({"etag": etag} if etag else {}),
                      **({"last_modified": modified} if modified else {})}
        self.stats["etag"] = etag
        _write_atomic(self.meta_path, json.dumps(self._meta).encode())

    def close(self) -> None:
        """(any thread) End a fetch in flight and release the connection."""
        self._aborter.abort()
        if self._pool is not None:
            self._pool.close()


def _write_atomic(path: str, data: bytes) -> None:
    private_dir(os.path.dirname(path) or ".")
    write_atomic_private(path, data)


# -- the reloader ------------------------------------------------------------------------------

# How long Reloader.stop() waits for its thread: a reload in progress is abandoned at its next
# step, the thread (a daemon) does not hold the process.
STOP_WAIT = 1.0


class _Stopping(Exception):
    """Raised inside a reload when the reloader was stopped meanwhile."""


@dataclass
class ReloadResult:
    ok: bool
    trigger: str
    generation: int = 0
    rules: int = 0
    correlations: int = 0             # Sigma correlations in the new set (an engine of their own)
    applied: bool = False             # the worker runs the new set
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)
    key_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Reloader:
    """Reloads the rules of a running pipeline; one reload at a time, on its own thread.

    ``request(trigger)`` (from a signal handler, the control channel, the service) wakes the
    thread; ``reload(trigger)`` does the work and returns a :class:`ReloadResult`. The thread
    also polls the rule files (every ``rules.watch_s``) and the update URL.
    """

    def __init__(self, pipeline, cfg: Config, *, on_config: Callable[[Config], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.pipeline = pipeline
        self.cfg = cfg
        self.on_config = on_config
        self.clock = clock
        self.config_path = cfg.path if cfg.path and cfg.path != DEFAULTS_NAME \
            and os.path.isfile(cfg.path) else None
        # the file as it was read at start: later reads are compared with it, not with the
        # command-line overrides (run --replay) applied to ``cfg``
        self.file_cfg: Config | None = None
        if self.config_path:
            try:
                self.file_cfg = load_config(self.config_path)
            except ConfigError:
                self.file_cfg = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # deque: request() appends from any thread (a signal handler included) while the reload
        # thread pops; a list swapped for an empty one could lose an append that raced the swap
        self._requests: collections.deque[str] = collections.deque()
        self._thread: threading.Thread | None = None
        self._signature = self._watch_signature()
        self.poller = UpdatePoller(cfg) if cfg.rules.update.url else None
        self._next_poll = 0.0
        self._publish_update_stats()

    # -- triggers ------------------------------------------------------------------------------
    def request(self, trigger: str) -> None:
        """Ask for a reload (safe from a signal handler: only sets an event)."""
        self._requests.append(trigger)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rules-reload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Stop the thread. A reload in progress is abandoned, not waited for: it swaps nothing
        in and reports nothing once stopped (loading and compiling a large set takes seconds of
        CPU that cannot be cut short); an update fetch in flight is ended."""
        self._stop.set()
        self._wake.set()
        if self.poller is not None:
            self.poller.close()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _watch_paths(self) -> list[str]:
        paths = list(self.cfg.rules.paths)
        if self.cfg.rules.placeholders:
            paths.append(self.cfg.rules.placeholders)
        if self.config_path:
            paths.append(self.config_path)
        return paths

    def _watch_signature(self) -> tuple:
        sig = stat_signature(self._watch_paths())
        if sig and sig[-1] == WATCH_CAPPED and not self._watch_capped_said:
            self._watch_capped_said = True
            log.warning("the rule paths hold more than %d rule files: the watch (watch_s) sees "
                        "changes to the first %d only; after changing others, reload the rules "
                        "(`etw-sensor reload` or SIGHUP)", MAX_WATCHED_FILES, MAX_WATCHED_FILES)
        return sig

    _watch_capped_said = False

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            waits = []
            if self.cfg.rules.watch_s > 0:
                waits.append(self.cfg.rules.watch_s)
            if self.poller is not None:
                waits.append(max(0.0, self._next_poll - now))
            self._wake.wait(min(waits) if waits else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the reload thread must survive anything
                log.exception("rule reload failed unexpectedly (the current rules keep running)")

    def _tick(self) -> None:
        requests = []
        while self._requests:
            requests.append(self._requests.popleft())
        for trigger in dict.fromkeys(requests):    # one reload per kind of request
            if self._stop.is_set():
                return
            self.reload(trigger)
        if self.poller is not None and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poller.interval
            outcome = self.poller.poll()
            self._publish_update_stats()
            if outcome == "updated":
                self.reload("url")
            elif outcome == "error":
                self._health_alert("rules_update_failed", f"rule update from {self.poller.safe_url} "
                                   f"failed: {self.poller.stats['last_error']}",
                                   {"url": self.poller.safe_url, "error": self.poller.stats["last_error"]},
                                   f"{self.poller.stats['failures']}")
        if self.cfg.rules.watch_s > 0 and not requests:
            sig = self._watch_signature()
            if sig != self._signature:
                self.reload("watch")

    def _publish_update_stats(self) -> None:
        if self.poller is not None:
            self.pipeline.reload_stats["update"] = dict(self.poller.stats)
        else:                              # no update URL (any more): the status names none
            self.pipeline.reload_stats.pop("update", None)

    def _health_alert(self, kind: str, message: str, details: dict, key: str) -> None:
        ledger = getattr(self.pipeline, "ledger", None)
        if ledger is not None:
            try:
                ledger.alert(kind, message, details, f"{ledger.boot_id}:{key}")
            except Exception:  # noqa: BLE001
                log.exception("cannot raise the health alert %s", kind)

    # -- the work --------------------------------------------------------------------------------
    def reload(self, trigger: str = "control", wait: float = 10.0) -> ReloadResult:
        """Load, check and compile the configured rules; swap them in, or keep the running set."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                res = self._reload(trigger, wait)
            except _Stopping:
                log.info("rule reload (%s) abandoned: the sensor is stopping", trigger)
                return ReloadResult(ok=False, trigger=trigger,
                                    errors=["the sensor is stopping: the reload was abandoned"])
            res.seconds = round(time.perf_counter() - t0, 3)
        if self._stop.is_set():
            # a result that came after the stop (a refusal included) is not reported: the stop's
            # own health document is the last one of this boot
            return res
        stats = self.pipeline.reload_stats
        stats["last_at"] = self.clock()
        stats["last_trigger"] = trigger
        if res.ok:
            stats["reloads"] += 1
            stats["last_error"] = None
            stats["restart_needed"] = res.restart_needed
            log.info("rules reloaded (%s): set %d, %d rule(s) in %.3f s%s", trigger, res.generation,
                     res.rules, res.seconds, (f"; restart needed for {', '.join(res.restart_needed)}"
                                              if res.restart_needed else ""))
        else:
            stats["failures"] += 1
            stats["last_error"] = "; ".join(res.errors)[:1000]
            log.error("rule reload (%s) REFUSED, the previous rules keep running: %s", trigger,
                      "; ".join(res.errors))
            self._health_alert("rules_reload_failed",
                               f"rule reload ({trigger}) refused: " + "; ".join(res.errors[:5])
                               + (" ..." if len(res.errors) > 5 else ""),
                               {"trigger": trigger, "errors": res.errors[:100],
                                "running_generation": self.pipeline.generation},
                               f"{stats['failures']}")
        if self._stop.is_set():
            return res                     # (a stop while the counters were updated)
        try:
            # status.json, the log line and a health document: the SIEM sees the set in force
            # (generation, key ids) and the reload counters
            self.pipeline.beat("reload")
        except Exception:  # noqa: BLE001
            log.exception("heartbeat after reload failed")
        return res

    def _reload(self, trigger: str, wait: float) -> ReloadResult:
        res = ReloadResult(ok=False, trigger=trigger)
        signature = self._watch_signature()    # taken before reading: a later edit reloads again
        new_cfg = self.cfg
        if self.config_path:
            try:
                file_cfg = load_config(self.config_path)
            except ConfigError as exc:
                res.errors = [f"config: {e}" for e in exc.errors]
                self._signature = signature
                return res
            base = self.file_cfg or file_cfg
            res.live, res.restart_needed = split_changes(base, file_cfg)
            new_cfg = self._merge_live(file_cfg)
        self._check_stop()
        from ..detect.loader import LoadCancelled
        try:
            loaded = load_configured(new_cfg, reloading=True, cancelled=self._stop.is_set)
        except LoadCancelled:
            raise _Stopping from None
        self._check_stop()
        res.errors += loaded.errors
        res.warnings += loaded.warnings
        if res.errors:
            self._signature = signature
            return res
        old = self.pipeline._active
        try:
            from ..detect.matcher import create
            matcher = create(loaded.rules, engine_of(new_cfg))
            exclusions = build_exclusions(new_cfg)
            correlator = build_correlator(new_cfg, loaded)
        except ValueError as exc:
            res.errors.append(f"rules: cannot compile: {exc}")
            self._signature = signature
            return res
        throttle = old.throttle
        window = new_cfg.throttle.window_s
        if window <= 0:
            throttle = None
        elif throttle is None:
            from ..detect.noise import Throttle
            throttle = Throttle(window)
        else:
            throttle.window = float(window)
        self._check_stop()               # compiled after the stop: nothing to swap into
        new = RuleSet(loaded.rules, matcher, exclusions, throttle, generation=old.generation + 1,
                      info={"trigger": trigger, "loaded_at": self.clock(), "packs": loaded.packs,
                            "problems": loaded.problems},
                      correlator=correlator)
        res.applied = self.pipeline.swap_rules(new, wait=wait)
        res.ok = True
        res.generation = new.generation
        res.rules = len(new.rules)
        res.correlations = len(loaded.correlations)
        res.key_ids = sorted({p["key_id"] for p in loaded.packs if p.get("key_id")})
        self._signature = signature
        if new_cfg is not self.cfg:
            self._apply_live(new_cfg)
        return res

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopping

    def _merge_live(self, file_cfg: Config) -> Config:
        """The running config with the live sections of ``file_cfg``."""
        cfg = msgspec.structs.replace(self.cfg)
        cfg.rules = file_cfg.rules
        cfg.exclusions = file_cfg.exclusions
        cfg.throttle = file_cfg.throttle
        cfg.logging = msgspec.structs.replace(self.cfg.logging, level=file_cfg.logging.level,
                                              alerts=file_cfg.logging.alerts)
        cfg.sensor = msgspec.structs.replace(self.cfg.sensor,
                                             cpu_limit_percent=file_cfg.sensor.cpu_limit_percent,
                                             cpu_window_s=file_cfg.sensor.cpu_window_s)
        return cfg

    def _apply_live(self, cfg: Config) -> None:
        old = self.cfg
        self.cfg = cfg
        if cfg.logging.level != old.logging.level:
            logging.getLogger().setLevel(getattr(logging, cfg.logging.level.upper()))
        if self.on_config is not None:
            self.on_config(cfg)
        if cfg.rules.update.url != old.rules.update.url or cfg.rules.update != old.rules.update:
            if self.poller is not None:
                self.poller.close()
            self.poller = UpdatePoller(cfg) if cfg.rules.update.url else None
            self._next_poll = 0.0
            self._publish_update_stats()
            self._wake.set()
