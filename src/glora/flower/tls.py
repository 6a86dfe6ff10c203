"""Throwaway TLS material for a SuperLink: a CA, and a server certificate for the given hosts.

For a quick start and tests; a real deployment may use certificates from its own CA instead.

    python -m glora.flower.tls certs/ 127.0.0.1 localhost superlink.example.org
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA certificate (SuperNodes and ``flwr`` trust it), the SuperLink's
    certificate and its key."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certificates(folder: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                      days: int = 30) -> Certificates:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (P-256) into ``folder``.

    The server certificate is valid for each of ``hosts`` (IP addresses or DNS names): the
    addresses SuperNodes and ``flwr`` use to reach the SuperLink.
    """
    if not hosts:
        raise ValueError("`hosts` must name at least one address of the SuperLink.")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=days)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder(subject_name=_name("glora throwaway CA"),
                                  issuer_name=_name("glora throwaway CA"),
                                  public_key=ca_key.public_key(),
                                  serial_number=x509.random_serial_number(), **valid)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder(subject_name=_name(hosts[0]), issuer_name=ca.subject,
                                    public_key=key.public_key(),
                                    serial_number=x509.random_serial_number(), **valid)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    out = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    out.key.chmod(0o600)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m glora.flower.tls FOLDER HOST [HOST ...]")
    made = make_certificates(Path(sys.argv[1]), sys.argv[2:])
    print(f"CA: {made.ca}\nserver certificate: {made.cert}\nserver key: {made.key}")
