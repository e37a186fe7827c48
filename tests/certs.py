"""Certificates made in the test: a CA, servers and clients signed by it (PEM files).

Keys are EC P-256: fast to make, so every test can have its own CA.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqtt-twisted tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    """A certificate and its key, as objects and as PEM files."""

    cert: x509.Certificate
    key: Any
    cert_path: str
    key_path: str


class CA:
    """A test certificate authority writing its files into ``directory``."""

    def __init__(self, directory: str, name: str = "Test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        safe = name.replace(" ", "_")
        self.cert_path = os.path.join(directory, f"{safe}.pem")
        with open(self.cert_path, "wb") as f:
            f.write(_cert_pem(self.cert))

    def issue(self, common_name: str, *, server: bool = False, dns: tuple[str, ...] = (),
              emails: tuple[str, ...] = (), uris: tuple[str, ...] = (),
              filename: str | None = None) -> Issued:
        """A certificate for ``common_name`` (a server's for localhost/127.0.0.1 if ``server``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        names: list[x509.GeneralName] = []
        if server:
            import ipaddress

            names += [x509.DNSName("localhost"),
                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        names += [x509.DNSName(d) for d in dns]
        names += [x509.RFC822Name(e) for e in emails]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        base = os.path.join(self.directory, filename or common_name.replace(" ", "_"))
        cert_path, key_path = f"{base}.crt", f"{base}.key"
        with open(cert_path, "wb") as f:
            f.write(_cert_pem(cert))
        with open(key_path, "wb") as f:
            f.write(_key_pem(key))
        return Issued(cert, key, cert_path, key_path)


def temp_dir(case: Any) -> str:
    """A private directory removed after the test (outside the checkout)."""
    path = tempfile.mkdtemp(prefix="mqtt-twisted-tls-")
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def replace_file(source: str, target: str) -> None:
    """Put ``source``'s content at ``target`` atomically (as a deploy tool does)."""
    tmp = target + ".new"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
