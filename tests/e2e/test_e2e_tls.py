"""The data plane over TLS, with a self-signed certificate made for the test."""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from e2e_support import ADMIN_KEY, API_KEY, HeliosProcess

pytestmark = pytest.mark.slow


def _self_signed_with_cryptography(certificate: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _self_signed_with_openssl(openssl: str, certificate: Path, key: Path) -> None:
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A (certificate, key) pair for 127.0.0.1 and localhost."""
    certificate = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    openssl = shutil.which("openssl")
    if importlib.util.find_spec("cryptography") is not None:
        _self_signed_with_cryptography(certificate, key)
    elif openssl is not None:
        _self_signed_with_openssl(openssl, certificate, key)
    else:
        pytest.skip("neither the cryptography package nor the openssl tool is available")
    return certificate, key


def test_decision_over_https(
    helios_factory: Callable[..., HeliosProcess], self_signed: tuple[Path, Path]
) -> None:
    helios = helios_factory(tls=self_signed)
    assert helios.url.startswith("https://")
    with helios.client() as client:
        response = client.get(
            "/allow?tenant=acme&resource=demo&cost=3", headers={"X-API-Key": API_KEY}
        )
        assert response.status_code == 200, response.text
        assert response.json()["remaining"] == 7
        assert response.headers["x-ratelimit-remaining"] == "7"
        # Keep-alive over TLS: the same connection serves the next decision.
        response = client.get("/allow?tenant=acme&resource=demo", headers={"X-API-Key": API_KEY})
        assert response.json()["remaining"] == 6
    assert "https://127.0.0.1" in helios.log()


def test_tls_port_refuses_unverified_and_plain_clients_and_keeps_serving(
    helios_factory: Callable[..., HeliosProcess], self_signed: tuple[Path, Path]
) -> None:
    helios = helios_factory(tls=self_signed)

    # A client that trusts only the system store rejects the self-signed certificate.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{helios.url}/health", timeout=5.0)

    # Plain HTTP on the TLS port gets no HTTP answer, and does not disturb the server.
    with socket.create_connection(("127.0.0.1", helios.http_port), timeout=5) as plain:
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = plain.recv(4096)
        except ConnectionResetError:
            reply = b""
        assert not reply.startswith(b"HTTP/1.1 200")

    # A TLS client that never finishes its handshake does not disturb it either.
    with (
        socket.create_connection(("127.0.0.1", helios.http_port), timeout=5),
        helios.client() as client,
    ):
        assert client.get("/health").json()["status"] == "ok"

    context = ssl.create_default_context(cafile=str(self_signed[0]))
    assert isinstance(helios.verify, ssl.SSLContext)
    with httpx.Client(verify=context, timeout=5.0) as client:
        assert client.get(f"{helios.url}/ready").status_code == 200


def test_the_control_plane_over_https(
    self_signed: tuple[Path, Path], helios_factory: Callable[..., HeliosProcess]
) -> None:
    certificate, key = self_signed
    helios = helios_factory(
        role="control",
        settings={
            "HELIOS_CONTROL_TLS_ENABLED": "true",
            "HELIOS_CONTROL_CERT_PATH": str(certificate),
            "HELIOS_CONTROL_KEY_PATH": str(key),
        },
    )
    trusted = ssl.create_default_context(cafile=str(certificate))
    url = f"https://127.0.0.1:{helios.control_port}"
    with httpx.Client(base_url=url, verify=trusted, timeout=5.0) as admin:
        created = admin.post("/v1/tenants", json={"name": "acme"}, headers={"X-API-Key": ADMIN_KEY})
        assert created.status_code == 201, created.text
    # Plain HTTP on the TLS port gets nowhere.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{helios.control_port}/health", timeout=2.0)
    assert "control https://" in helios.log()
