"""TLS for every port the system serves and every connection it opens: one way to build an
:class:`ssl.SSLContext`, as BCP 195 has it.

- TLS 1.2 (RFC 5246) and 1.3 (RFC 8446) only: TLS 1.0 and 1.1 are deprecated (RFC 8996) and
  SSL never was an option (RFC 9325 3.1.1).
- TLS 1.2 cipher suites are those RFC 9325 4.2 recommends: ephemeral elliptic-curve
  Diffie-Hellman with AES-GCM, RSA or ECDSA certificates; TLS 1.3 brings its own (RFC 8446 9.1).
- No compression (RFC 9325 3.3) and no renegotiation asked by a client (RFC 9325 3.5).

DICOM over TLS follows the same rules: PS3.15 Annex B's BCP 195 profiles are BCP 195 applied to
DICOM (DCMTK's ``+tls`` speaks its non-downgrading BCP 195 profile by default). A server port
asks for client certificates when its section names ``tls_client_ca`` (the client's certificate
is its node authentication, PS3.15 B.1) and then refuses a client without one from that CA
during the handshake.

Contexts for outgoing connections are kept and made again when one of their files changes, so
that a renewed certificate is used from the next connection on.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from pathlib import Path
from typing import Any

from pacs.settings import Peer, Settings, TLSClient, TLSServer

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2  # RFC 8996; RFC 9325 3.1.1
TLS12_CIPHERS = ":".join((  # RFC 9325 4.2, in OpenSSL's names
    "ECDHE-ECDSA-AES128-GCM-SHA256",  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    "ECDHE-RSA-AES128-GCM-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    "ECDHE-ECDSA-AES256-GCM-SHA384",  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    "ECDHE-RSA-AES256-GCM-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
))


class TLSConfigurationError(ValueError):
    """A certificate, key or CA file the settings name cannot be used; says which setting."""


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(section: str, server: TLSServer) -> ssl.SSLContext:
    """The context of a port served over TLS from ``[section]`` (``tls_cert``, ``tls_key``,
    ``tls_client_ca``): client certificates required when ``tls_client_ca`` is set.

    Raises :class:`TLSConfigurationError` naming the setting whose file cannot be used."""
    if server.tls_cert is None:
        raise TLSConfigurationError(f"[{section}] tls_cert is not set")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, f"[{section}]", server.tls_cert, server.tls_key)
    if server.tls_client_ca is not None:
        _load_ca(context, f"[{section}] tls_client_ca", server.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(what: str, client: TLSClient, *, cert: Path | None = None, key: Path | None = None,
                   ca: Path | None = None) -> ssl.SSLContext:
    """The context of a connection this system opens to ``what`` (a settings path for the
    errors: "[his]", "[[peers]] RIS"): the other side's certificate checked against ``tls_ca``
    (else ``ca``, else the system's CAs) and, unless ``tls_check_hostname`` is off, for the host
    name (RFC 9525); ``tls_cert`` (else ``cert``) presented if set. Kept until a file changes."""
    chosen_ca = client.tls_ca or ca
    chosen_cert, chosen_key = (client.tls_cert, client.tls_key) if client.tls_cert else (cert, key)
    files = tuple(path for path in (chosen_ca, chosen_cert, chosen_key) if path is not None)
    signature = (what, chosen_ca, chosen_cert, chosen_key, client.tls_check_hostname, _stamps(files))
    with _kept_lock:
        kept = _kept.get(signature[:5])
        if kept is not None and kept[0] == signature:
            return kept[1]
    if chosen_ca is not None:
        context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        _load_ca(context, f"{what} tls_ca", chosen_ca)
    else:
        context = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    context.check_hostname = client.tls_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if chosen_cert is not None:
        _load_chain(context, what, chosen_cert, chosen_key)
    with _kept_lock:
        _kept[signature[:5]] = (signature, context)
    return context


def peer_context(settings: Settings, peer: Peer) -> ssl.SSLContext:
    """The context of an association to a ``[[peers]]`` entry with ``tls = true``: this AE's own
    certificate (``[dicom] tls_cert``) and the CA it trusts for clients (``[dicom]
    tls_client_ca``) unless the entry names others."""
    dicom = settings.dicom
    return client_context(f"[[peers]] {peer.ae_title}", peer, cert=dicom.tls_cert, key=dicom.tls_key,
                          ca=dicom.tls_client_ca)


def peer_identity(connection: Any) -> str:
    """Who the other side of a TLS connection is by its certificate (its subject's common name,
    or its whole subject), "" without one."""
    try:
        certificate = connection.getpeercert()
    except (AttributeError, ValueError, OSError):
        return ""
    if not certificate:
        return ""
    subject = [dict(part) for part in certificate.get("subject", ())]
    names = [item["commonName"] for item in subject if "commonName" in item]
    if names:
        return str(names[0])
    return ", ".join(f"{key}={value}" for item in subject for key, value in item.items())


_kept: dict[tuple[Any, ...], tuple[tuple[Any, ...], ssl.SSLContext]] = {}
_kept_lock = threading.Lock()


def _stamps(files: tuple[Path, ...]) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in files:
        try:
            status = os.stat(path)
            stamps.append((status.st_mtime_ns, status.st_size))
        except OSError:
            stamps.append((0, 0))  # loading it will say what is wrong
    return tuple(stamps)


def _load_chain(context: ssl.SSLContext, what: str, cert: Path, key: Path | None) -> None:
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        named = f"tls_cert {cert}" + (f" / tls_key {key}" if key else "")
        raise TLSConfigurationError(f"{what} {named}: {_reason(exc)} (a PEM certificate chain and its "
                                    "unencrypted private key are needed)") from exc


def _load_ca(context: ssl.SSLContext, what: str, path: Path) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigurationError(f"{what} {path}: {_reason(exc)} (PEM CA certificates are needed)") from exc


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason in words: "no certificate or crl found", not "[X509: ...] (_ssl.c:123)"."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return re.sub(r"^\[[^]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text) or type(exc).__name__
