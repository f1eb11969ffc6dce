"""Optional TLS for the parties' channel: a self-signed certificate for 127.0.0.1 / localhost, and the gRPC
credentials built from PEM files (``cryptography`` writes the certificate)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: str, *, days: int = 30) -> tuple[str, str]:
    """Write ``cert.pem`` and ``key.pem`` (P-256, valid ``days``, for 127.0.0.1 and localhost) to
    ``directory``; return their paths. For tests and local runs: a real deployment uses its own PKI."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tfads federated party")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)).add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    os.makedirs(directory, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def server_credentials(cert_path: str, key_path: str) -> grpc.ServerCredentials:
    """Server credentials from PEM files."""
    with open(cert_path, "rb") as c, open(key_path, "rb") as k:
        return grpc.ssl_server_credentials([(k.read(), c.read())])


def channel_credentials(ca_path: str) -> grpc.ChannelCredentials:
    """Channel credentials trusting the certificate (or CA) in ``ca_path``."""
    with open(ca_path, "rb") as f:
        return grpc.ssl_channel_credentials(root_certificates=f.read())
