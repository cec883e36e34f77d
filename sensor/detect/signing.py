"""Signed rule packs: Ed25519 signatures over a pack's exact bytes, in a trailing block.

A signed pack is the pack file as ``etw-sensor rules compile`` wrote it, followed by one
signature block::

    <the pack's bytes, whatever their format>
    \\nETW-SENSOR-SIGNATURE\\n{"alg": "ed25519", "key_id": ..., "sha256": ..., "signed_at": ..., "v": 1, "sig": ...}\\n

The signature covers a fixed domain string, the block's fields other than ``sig`` (canonical
JSON) and every byte of the pack before the block, so it is independent of the pack's own
layout: a new pack or IR version signs and verifies the same way. The pack's bytes are
handed to the pack decoder only after the signature held.

Keys (``etw-sensor rules keygen``) are small text files, one line each::

    etw-sensor-ed25519-public <key id> <base64 of the 32-byte public key>
    etw-sensor-ed25519-private <key id> <base64 of the 32-byte private key>

The private key file is created 0600 and refused by ``rules sign`` when others can read it.
The sensor trusts the public keys its config lists (``[rules] trusted_keys``), each with an
id and optionally a ``not_after`` date; once keys are configured, a pack without a signature,
signed with a key not listed (removed on rotation), with a key past its date, or whose
signature does not verify is refused, and so is a rule file that is not a signed pack.
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .ir import RuleError

MARKER = b"\nETW-SENSOR-SIGNATURE\n"
DOMAIN = b"etw-sensor rule pack signature v1\n"
SIG_VERSION = 1
PUBLIC_TAG = "etw-sensor-ed25519-public"
PRIVATE_TAG = "etw-sensor-ed25519-private"
MAX_TRAILER = 4096          # a signature block is ~300 bytes; a bigger tail is not one
MAX_KEY_FILE = 4096
KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")   # fullmatch only (a "$" would let a final "\n" in)


class KeyError_(ValueError):
    """A key file or key entry that cannot be used (the message says why)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{what}: not base64") from None
    if len(raw) != size:
        raise KeyError_(f"{what}: {len(raw)} bytes, an Ed25519 key has {size}")
    return raw


def check_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise KeyError_(f"key id {key_id!r}: 1-64 characters of letters, digits, '.', '_' or '-', "
                        f"starting with a letter or digit")
    return key_id


# -- keys ------------------------------------------------------------------------------------

def generate_key(key_id: str) -> tuple[str, str]:
    """A new key pair as the (private, public) key file texts."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
    check_key_id(key_id)
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return f"{PRIVATE_TAG} {key_id} {_b64(seed)}\n", f"{PUBLIC_TAG} {key_id} {_b64(pub)}\n"


def fingerprint(public_raw: bytes) -> str:
    """SHA-256 of the raw public key, hex (what ``keygen`` prints, to compare out of band)."""
    return hashlib.sha256(public_raw).hexdigest()


def _parse_key_text(text: str, tag: str, what: str) -> tuple[str, bytes]:
    parts = text.strip().split()
    if len(parts) != 3 or parts[0] != tag:
        raise KeyError_(f"{what}: not an etw-sensor key file (expected one line '{tag} <id> <base64>')")
    return check_key_id(parts[1]), _unb64(parts[2], what, 32)


def read_key_file(path: str, tag: str) -> tuple[str, bytes]:
    """(key id, raw key) from a key file of kind ``tag``; KeyError_ when it is not one."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_KEY_FILE:
        raise KeyError_(f"{path}: too large for a key file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyError_(f"{path}: not an etw-sensor key file") from None
    return _parse_key_text(text, tag, path)


def parse_public_key(text: str, what: str = "public_key") -> tuple[str | None, bytes]:
    """A public key given inline: a whole public key file line, or the bare base64."""
    text = text.strip()
    if text.startswith(PUBLIC_TAG):
        key_id, raw = _parse_key_text(text, PUBLIC_TAG, what)
        return key_id, raw
    return None, _unb64(text, what, 32)


def parse_not_after(value) -> _dt.datetime | None:
    """``not_after`` as an aware UTC datetime: a date means the end of that day (UTC)."""
    if value in (None, ""):
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if isinstance(value, _dt.date):
        return _dt.datetime.combine(value, _dt.time(23, 59, 59), _dt.timezone.utc)
    text = str(value).strip()
    try:
        if len(text) == 10:
            return parse_not_after(_dt.date.fromisoformat(text))
        return parse_not_after(_dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise KeyError_(f"not_after: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public: bytes
    not_after: _dt.datetime | None = None
    source: str = ""


@dataclass
class Trust:
    """The public keys a sensor accepts packs from, by key id."""

    keys: dict[str, TrustedKey] = field(default_factory=dict)
    clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def add(self, key: TrustedKey) -> None:
        if key.key_id in self.keys:
            raise KeyError_(f"key id {key.key_id!r} is listed twice")
        self.keys[key.key_id] = key


def trust_from_entries(entries: Sequence[Mapping], clock=None) -> tuple[Trust, list[str]]:
    """The trust store from ``[[rules.trusted_keys]]`` entries (``id``, ``public_key`` or
    ``file``, ``not_after``); the problems, each with its index, in the second item."""
    trust = Trust() if clock is None else Trust(clock=clock)
    errors: list[str] = []
    for i, e in enumerate(entries):
        where = f"rules.trusted_keys[{i}]"
        try:
            given_id = e.get("id") or None
            inline, path = e.get("public_key") or "", e.get("file") or ""
            if bool(inline) == bool(path):
                raise KeyError_("give exactly one of public_key (inline) or file")
            if path:
                key_id, raw = read_key_file(path, PUBLIC_TAG)
            else:
                key_id, raw = parse_public_key(inline)
            if given_id is not None:
                check_key_id(given_id)
                if key_id is not None and key_id != given_id:
                    raise KeyError_(f"id {given_id!r} does not match the key's own id {key_id!r}")
                key_id = given_id
            if key_id is None:
                raise KeyError_("id: a key needs an id (the id packs are signed with)")
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
            Ed25519PublicKey.from_public_bytes(raw)
            trust.add(TrustedKey(key_id, raw, parse_not_after(e.get("not_after")), path or "inline"))
        except KeyError_ as exc:
            errors.append(f"{where}: {exc}")
        except ValueError as exc:   # cryptography: not a valid point
            errors.append(f"{where}: not a usable Ed25519 public key ({exc})")
    return trust, errors


# -- the signature block -----------------------------------------------------------------------

@dataclass(frozen=True)
class PackSignature:
    """What a pack's signature block says, and whether it was checked against a trusted key."""

    key_id: str | None
    verified: bool
    signed_at: str | None = None
    sha256: str = ""

    def as_dict(self) -> dict:
        return {"key_id": self.key_id, "verified": self.verified, "signed_at": self.signed_at,
                "sha256": self.sha256}


def _message(meta: Mapping, pack: bytes) -> bytes:
    return DOMAIN + json.dumps(dict(meta), sort_keys=True, separators=(",", ":")).encode() + b"\n" + pack


def split_signature(data: bytes, path: str = "<pack>") -> tuple[bytes, dict | None]:
    """(the pack's bytes, the signature block's fields or None when there is none)."""
    tail_start = max(0, len(data) - MAX_TRAILER)
    at = data.rfind(MARKER, tail_start)
    if at < 0:
        return data, None
    block = data[at + len(MARKER):]
    if not block.endswith(b"\n") or b"\n" in block[:-1]:
        raise RuleError("rule pack signature block is damaged (not one line)", path)
    try:
        meta = json.loads(block)
        if not isinstance(meta, dict):
            raise ValueError
        for k in ("alg", "key_id", "sha256", "sig"):
            if not isinstance(meta.get(k), str):
                raise ValueError
    except ValueError:
        raise RuleError("rule pack signature block is damaged", path) from None
    return data[:at], meta


def sign_pack(pack: bytes, key_id: str, private_raw: bytes, now: _dt.datetime | None = None) -> bytes:
    """``pack`` (an existing signature block replaced) followed by a new signature block."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    body, _old = split_signature(pack)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    meta = {"alg": "ed25519", "key_id": check_key_id(key_id), "v": SIG_VERSION,
            "sha256": hashlib.sha256(body).hexdigest(),
            "signed_at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    sig = Ed25519PrivateKey.from_private_bytes(private_raw).sign(_message(meta, body))
    block = json.dumps(dict(meta, sig=_b64(sig)), sort_keys=True, separators=(",", ":")).encode()
    return body + MARKER + block + b"\n"


def open_pack(data: bytes, path: str, trust: Trust | None) -> tuple[bytes, PackSignature]:
    """The pack's bytes once its signature held (when ``trust`` has keys), and what signed it.

    RuleError (naming ``path``) for a pack that must be refused. Without trusted keys an
    existing signature block is only checked for integrity (its SHA-256) and reported as not
    verified.
    """
    body, meta = split_signature(data, path)
    if meta is None:
        if trust:
            raise RuleError("rule pack is not signed: [rules] trusted_keys is set, so only packs "
                            "signed with one of those keys load (etw-sensor rules sign)", path)
        return body, PackSignature(None, False)
    key_id = meta["key_id"]
    digest = hashlib.sha256(body).hexdigest()
    if meta.get("alg") != "ed25519" or meta.get("v") != SIG_VERSION:
        raise RuleError(f"rule pack signature: algorithm {meta.get('alg')!r} version "
                        f"{meta.get('v')!r} is not supported (ed25519, version {SIG_VERSION})", path)
    if not trust:
        if digest != meta["sha256"]:
            raise RuleError("rule pack was changed after it was signed (SHA-256 mismatch)", path)
        return body, PackSignature(key_id, False, meta.get("signed_at"), digest)
    key = trust.keys.get(key_id)
    if key is None:
        raise RuleError(f"rule pack is signed with key {key_id!r}, which is not in [rules] "
                        f"trusted_keys (unknown, or removed on rotation)", path)
    if key.not_after is not None and trust.clock() > key.not_after:
        raise RuleError(f"rule pack is signed with key {key_id!r}, trusted only until "
                        f"{key.not_after.strftime('%Y-%m-%d %H:%M:%SZ')} (expired: sign the pack "
                        f"with the current key)", path)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        sig = base64.b64decode(meta["sig"], validate=True)
        unsigned = {k: v for k, v in meta.items() if k != "sig"}
        if digest != meta["sha256"]:
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(key.public).verify(sig, _message(unsigned, body))
    except (InvalidSignature, binascii.Error, ValueError):
        raise RuleError(f"rule pack signature does not verify with key {key_id!r}: the pack was "
                        f"changed after it was signed, or signed with another key", path) from None
    return body, PackSignature(key_id, True, meta.get("signed_at"), digest)
