"""TLS settings shared by every HTTPS output, and the secrets they carry.

Policy (style-and-delivery.md B.2 "TLS"): verification on by default, TLS 1.2 minimum, the OS
trust store through truststore unless a CA file is given, an optional SHA-256 pin of the leaf
certificate checked *in addition to* normal verification, an optional client certificate, and
``insecure_skip_verify`` only when asked for (warned about on every start).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger("sensor.outputs.tls")


class ConfigError(ValueError):
    """An output option is missing or wrong (exit code 2 territory)."""


class PinMismatch(ssl.SSLCertVerificationError):
    """The server's leaf certificate does not match the configured SHA-256 pin."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.verify_message = message


class Secret:
    """A token or key that must never reach a log: its repr and str are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value (for building a header, nothing else)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))


def load_secret(options: Mapping[str, Any], key: str) -> Secret | None:
    """The secret named ``key`` from ``key``, ``key_env`` (an environment variable) or ``key_file``."""
    given = [k for k in (key, key + "_env", key + "_file") if options.get(k)]
    if len(given) > 1:
        raise ConfigError(f"give only one of {', '.join(given)}")
    if options.get(key):
        return Secret(str(options[key]))
    env = options.get(key + "_env")
    if env:
        value = os.environ.get(str(env))
        if not value:
            raise ConfigError(f"{key}_env: environment variable {env} is not set or empty")
        return Secret(value.strip())
    path = options.get(key + "_file")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file: cannot read {path}: {exc.strerror or exc}") from None
        except ValueError:     # a NUL in the path (or text that is not UTF-8): no such file
            raise ConfigError(f"{key}_file: cannot read {path!r}: not a usable path, or not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{key}_file: {path} is empty")
        return Secret(value)
    return None


def _normalise_pin(pin: str) -> str:
    hexpin = pin.replace(":", "").replace(" ", "").lower()
    if hexpin.startswith("sha256/") or hexpin.startswith("sha256="):
        hexpin = hexpin[7:]
    if len(hexpin) != 64 or any(c not in "0123456789abcdef" for c in hexpin):
        raise ConfigError("pin_sha256 must be 64 hex digits (SHA-256 of the leaf certificate, DER)")
    return hexpin


@dataclass(frozen=True)
class TLSConfig:
    """How an output verifies the receiver and proves who it is."""

    ca_file: str | None = None
    pin_sha256: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure_skip_verify: bool = False
    minimum_version: str = "TLSv1.2"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "TLSConfig":
        """Build from the plain option dict (keys as documented in docs/delivery.md)."""
        pin = options.get("pin_sha256")
        minimum = str(options.get("tls_min_version") or "TLSv1.2")
        if minimum not in ("TLSv1.2", "TLSv1.3"):
            raise ConfigError("tls_min_version must be TLSv1.2 or TLSv1.3")
        cfg = cls(
            ca_file=options.get("ca_file") or None,
            pin_sha256=_normalise_pin(pin) if pin else None,
            client_cert=options.get("client_cert") or None,
            client_key=options.get("client_key") or None,
            insecure_skip_verify=bool(options.get("insecure_skip_verify", False)),
            minimum_version=minimum,
        )
        for key in ("ca_file", "client_cert", "client_key"):
            value = getattr(cfg, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"{key}: {value} does not exist")
        if cfg.client_key and not cfg.client_cert:
            raise ConfigError("client_key needs client_cert")
        return cfg

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext implementing this policy (pin checked after each handshake)."""
        if self.ca_file:
            ctx: ssl.SSLContext = _pinned_class(ssl.SSLContext, self.pin_sha256)(ssl.PROTOCOL_TLS_CLIENT)
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"ca_file: cannot load {self.ca_file}: {exc}") from None
        else:
            import truststore  # the OS store: Windows CryptoAPI, macOS Security, OpenSSL paths on Linux

            ctx = _pinned_class(truststore.SSLContext, self.pin_sha256)(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.minimum_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
        if self.client_cert:
            try:
                ctx.load_cert_chain(self.client_cert, self.client_key)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"client_cert: cannot load {self.client_cert}: {exc}") from None
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def warn_if_insecure(self, url: str) -> None:
        """Log the every-start warning that verification is off."""
        if self.insecure_skip_verify:
            log.warning("TLS certificate verification is DISABLED for %s (insecure_skip_verify=true); "
                        "anyone on the path can read and forge alert traffic%s", url,
                        "; only the SHA-256 pin protects it" if self.pin_sha256 else "")


def cert_sha256(der: bytes) -> str:
    """Hex SHA-256 of a DER certificate (the form ``pin_sha256`` takes)."""
    return hashlib.sha256(der).hexdigest()


_PINNED: dict[tuple[type, bool], type] = {}


def _pinned_class(base: type, pin: str | None) -> Any:
    """``base`` with a wrap_socket that checks ``pin`` once the handshake is done."""
    if not pin:
        return base
    key = (base, True)
    cls = _PINNED.get(key)
    if cls is None:

        def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[no-untyped-def]
            ssock = base.wrap_socket(self, sock, *args, **kwargs)
            der = ssock.getpeercert(binary_form=True)
            got = cert_sha256(der) if der else ""
            if not hmac.compare_digest(got, self._sensor_pin):
                ssock.close()
                raise PinMismatch(f"certificate pin mismatch: server presented sha256 {got or 'nothing'}")
            return ssock

        cls = type(f"Pinned{base.__name__}", (base,), {"wrap_socket": wrap_socket})
        _PINNED[key] = cls

    class _Factory:
        def __new__(cls_, protocol: int):  # type: ignore[no-untyped-def]
            ctx = cls(protocol)
            ctx._sensor_pin = pin
            return ctx

    return _Factory
