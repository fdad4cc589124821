"""A throw-away CA and a server certificate for the lab, made once per lab root with openssl.

EC P-256 keys; the CA carries basicConstraints CA:TRUE and keyUsage keyCertSign because
Python >= 3.13 verifies chains strictly. The server cert names localhost and 127.0.0.1.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class LabCertificates:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def ensure_certificates(tls_dir: Path) -> LabCertificates:
    """Return the lab's CA and server cert, generating them only if any file is missing."""
    certs = LabCertificates(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    if all(p.exists() for p in (certs.ca_file, certs.cert_file, certs.key_file)):
        return certs
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca_key, csr, ext = tls_dir / "ca.key", tls_dir / "server.csr", tls_dir / "server.ext"
    _new_key(ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "3650",
        "-subj", "/CN=postroom mail lab CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        "-out", str(certs.ca_file),
    )  # fmt: skip
    _new_key(certs.key_file)
    _openssl("req", "-new", "-key", str(certs.key_file), "-subj", "/CN=localhost", "-out", str(csr))
    ext.write_text(SERVER_EXTENSIONS)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(certs.ca_file), "-CAkey", str(ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", "825", "-sha256",
        "-extfile", str(ext), "-out", str(certs.cert_file),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return certs
