"""A test certificate authority, made in a temporary folder with ``cryptography``: a CA, server
certificates for loopback (``localhost`` and ``127.0.0.1``), client certificates, and a second
CA nobody trusts."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RSA_BITS = 2048  # RFC 9325 4.5: at least 2048-bit RSA keys
VALID_DAYS = 30


@dataclass
class Issued:
    cert: Path
    key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


class TestCA:
    """A CA in ``folder``: :meth:`server` and :meth:`client` issue certificates signed by it."""

    __test__ = False  # not a test class for pytest

    def __init__(self, folder: Path, name: str = "Test Hospital CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        stem = name.lower().replace(" ", "-")
        self.cert = folder / f"{stem}.pem"
        self.cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _issue(self, name: str, usages: list[x509.ObjectIdentifier], hosts: tuple[str, ...] = ()) -> Issued:
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False))
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        stem = name.lower().replace(" ", "-")
        cert = self.folder / f"{stem}.crt"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return Issued(cert, _write_key(key, self.folder / f"{stem}.key"))

    def server(self, name: str = "pacs.test", hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Issued:
        """A node's certificate for loopback: it serves, and opens connections with it too (a
        DICOM AE is both, PS3.15 B.1)."""
        return self._issue(name, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], hosts)

    def client(self, name: str) -> Issued:
        return self._issue(name, [ExtendedKeyUsageOID.CLIENT_AUTH])


class PKI:
    """What the TLS tests use: a CA, this server's certificate (``pacs.test``, for loopback), a
    client's, and a client certificate of another CA nobody here trusts."""

    def __init__(self, folder: Path, client: str = "CT1") -> None:
        self.ca = TestCA(folder / "ca")
        self.server = self.ca.server("pacs.test")
        self.client = self.ca.client(client)
        self.rogue_ca = TestCA(folder / "rogue", "Rogue CA")
        self.rogue = self.rogue_ca.client(client)

    def server_settings(self, *, client_ca: bool = True) -> dict:
        """A section's TLS settings (``[dicom]``, ``[mllp]``, ``[http]``) on a port of the system's choosing."""
        return {"tls_cert": self.server.cert, "tls_key": self.server.key, "tls_port": 0,
                "tls_client_ca": self.ca.cert if client_ca else None}

    def client_context(self, issued: Issued | None = None, *, certificate: bool = True) -> ssl.SSLContext:
        """A Python client's context: the server checked against the CA; ``issued`` (the client's
        certificate by default) presented unless ``certificate`` is false."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        if certificate:
            issued = issued or self.client
            context.load_cert_chain(issued.cert, issued.key)
        return context
