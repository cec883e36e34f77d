"""Rule packs: a compiled rule set in one versioned, checksummed, data-only file.

Layout (UTF-8)::

    ETW-SENSOR-RULEPACK\\n
    {"pack": 2, "ir": 1, "length": N, "sha256": "<hex of body>"}\\n
    <body: N bytes of JSON>  {"created": ..., "generator": ..., "sources": [...], "rules": [...],
                              "correlations": [...], "filters": [...]}

The body holds each rule's IR (``Rule.to_json``): plain JSON, never pickle or code,
so a service running as SYSTEM can load it without executing anything from it.
Pack version 2 adds Sigma correlation rules and filters (``sensor.detect.metarules``);
version 1 packs (rules only) are still read.
A pack whose length or SHA-256 does not match its header (truncated, edited,
corrupted) is refused.  Loading needs neither pySigma nor YAML.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import msgspec

from .. import __version__
from .._files import open_regular, read_regular
from .ir import Rule, RuleError

MAGIC = b"ETW-SENSOR-RULEPACK\n"
PACK_VERSION = 2
READABLE_PACKS = (1, 2)   # version 1: rules only (no correlations or filters)
IR_VERSION = 1  # bump when the IR's semantics or JSON shape change
PACK_SUFFIX = ".pack"
_MAX_HEADER = 4096
# The whole SigmaHQ process_creation set is a 2.2 MB pack; a larger file is refused before
# it is read (each rule in it is also bounded, see sensor.detect.ir.check_rule_size).
MAX_PACK_BYTES = 64 * 1024 * 1024


def is_pack(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file that starts with the pack magic."""
    try:
        fd = open_regular(path)
    except OSError:
        return False
    try:
        return os.read(fd, len(MAGIC)) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass
class PackContent:
    """Everything a pack holds."""

    rules: list[Rule]
    correlations: list = field(default_factory=list)
    filters: list = field(default_factory=list)


def encode_pack(rules: Sequence[Rule], sources: Sequence[str] = (), correlations: Sequence = (),
                filters: Sequence = ()) -> bytes:
    """The pack bytes for ``rules`` (and the correlations and filters that go with them)."""
    body = json.dumps({
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": f"etw-sensor {__version__}",
        "sources": list(sources),
        "rules": [r.to_json() for r in rules],
        "correlations": [c.to_json() for c in correlations],
        "filters": [f.to_json() for f in filters],
    }, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    header = json.dumps({"pack": PACK_VERSION, "ir": IR_VERSION, "length": len(body),
                         "sha256": hashlib.sha256(body).hexdigest()},
                        sort_keys=True).encode("ascii")
    return MAGIC + header + b"\n" + body


def write_pack(rules: Sequence[Rule], path: str | os.PathLike, sources: Sequence[str] = (),
               correlations: Sequence = (), filters: Sequence = ()) -> int:
    """Write a pack atomically (temp file + rename); returns its size in bytes."""
    data = encode_pack(rules, sources, correlations, filters)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(data)


def decode_pack(data: bytes, path: str = "<pack>") -> list[Rule]:
    """Rules from pack bytes; RuleError (with ``path``) when the pack is not intact."""
    return decode_pack_content(data, path).rules


def decode_pack_content(data: bytes, path: str = "<pack>") -> PackContent:
    """Rules, correlations and filters from pack bytes (RuleError when not intact)."""
    from .metarules import Correlation, Filter

    if not data.startswith(MAGIC):
        raise RuleError("not a rule pack (bad magic)", path)
    nl = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if nl < 0:
        raise RuleError("rule pack is truncated or damaged (no header)", path)
    try:
        header = json.loads(data[len(MAGIC):nl])
        version, ir, length, digest = header["pack"], header["ir"], header["length"], header["sha256"]
    except (ValueError, KeyError, TypeError):
        raise RuleError("rule pack header is damaged", path) from None
    if version not in READABLE_PACKS or ir != IR_VERSION:
        raise RuleError(f"rule pack version {version} (IR {ir}) is not supported by this "
                        f"sensor (reads pack {', '.join(map(str, READABLE_PACKS))}, IR {IR_VERSION}); "
                        "recompile it with `etw-sensor rules compile`", path)
    body = data[nl + 1:]
    if len(body) != length:
        raise RuleError(f"rule pack is truncated or padded: body has {len(body)} bytes, "
                        f"header says {length}", path)
    if hashlib.sha256(body).hexdigest() != digest:
        raise RuleError("rule pack checksum mismatch: the file was modified or corrupted "
                        "after it was compiled", path)
    try:
        doc = msgspec.json.decode(body)
        rules = []
        for d in doc["rules"]:
            d = dict(d)
            d["origin"] = "pack"
            rules.append(Rule.from_json(d))
        correlations = [Correlation.from_json(dict(d)) for d in doc.get("correlations") or ()]
        filters = [Filter.from_json(dict(d)) for d in doc.get("filters") or ()]
    except RuleError as exc:
        raise RuleError(f"rule pack holds an invalid rule: {exc.message}", path) from None
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RuleError(f"rule pack body is not valid: {exc}", path) from None
    return PackContent(rules, correlations, filters)


def read_pack(path: str | os.PathLike) -> list[Rule]:
    """Rules from a pack file (RuleError when unreadable or not intact)."""
    return read_pack_content(path).rules


def read_pack_content(path: str | os.PathLike) -> PackContent:
    """Rules, correlations and filters from a pack file (RuleError when not intact)."""
    try:
        data = read_regular(path, MAX_PACK_BYTES)
    except OSError as exc:
        raise RuleError(f"cannot read rule pack: {exc.strerror or exc}", str(path)) from None
    if data is None:
        raise RuleError(f"rule pack is larger than {MAX_PACK_BYTES:,} bytes; refused", str(path))
    return decode_pack_content(data, str(path))
