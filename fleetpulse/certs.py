"""``fleetpulse certs init``: a private CA and a server certificate for the gRPC port, so that
agents speak TLS from the first one (enrollment tokens and agent credentials never cross a network
in clear).

Writes into one folder: ``ca.pem`` (give it to every agent: ``server.tls_ca_file``),
``ca-key.pem`` (keep it offline; it signs the next server certificate), ``server.pem`` and
``server-key.pem`` (the front-end's ``FLEETPULSE_GRPC_TLS_CERT_FILE`` / ``_KEY_FILE``). Keys are
ECDSA P-256 and written with mode 0600; the server certificate names every host name and IP
address it is given (subjectAltName), for 825 days (the longest validity clients accept for a
certificate of a private CA), the CA for ten years. Existing files are never overwritten unless
asked: a new CA would cut every agent off.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetpulse.errors import ConfigError

SERVER_DAYS = 825
CA_DAYS = 3650
FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem")


@dataclass(frozen=True)
class Written:
    ca: Path
    ca_key: Path
    server: Path
    server_key: Path


def init(
    folder: Path, names: Sequence[str], force: bool = False, if_absent: bool = False
) -> Written:
    """Create the CA and the server certificate for ``names`` (host names or IP addresses).
    ``if_absent``: keep a complete set already there (a deployment's first start creates it, the
    next ones keep it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ConfigError("name at least one host name or IP address (--name)")
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(c.isspace() or c in "/:@" for c in name):
                raise ConfigError(f"{name!r} is not a host name or IP address") from None
            alt_names.append(x509.DNSName(name))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / file for file in FILES]
    present = [path.name for path in paths if path.exists()]
    if if_absent and len(present) == len(paths):
        return Written(*paths)
    if present and not force:
        raise ConfigError(
            f"{folder} already holds {', '.join(present)}; a new CA cuts off every "
            "agent that trusts the old one (--force replaces them)"
        )
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetpulse private CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM

    def key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    written = Written(*paths)
    _write(written.ca, ca_cert.public_bytes(pem), 0o644)
    _write(written.ca_key, key_bytes(ca_key), 0o600)
    _write(written.server, server_cert.public_bytes(pem), 0o644)
    _write(written.server_key, key_bytes(server_key), 0o600)
    return written


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with ``mode`` from the start (a key is never readable by others, not even
    for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it, never widened
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
