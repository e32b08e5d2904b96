"""etcd over TLS: a CA of etcd's own, and a client certificate when etcd asks for one."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_servers import EtcdServer, free_ports, require_etcd

from helios.config import StoreSettings
from helios.errors import ConfigError
from helios.store.factory import etcd_tls, open_store
from helios.store.kv import Put, StoreUnavailable


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate (its own CA) and key for 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl tool is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
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
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certificate, key


@dataclass
class TlsEtcdServer(EtcdServer):
    """An etcd serving clients over TLS that asks each for a client certificate.

    Both certificates are self-signed: each is its own CA.
    """

    certificate: Path = Path()
    key: Path = Path()
    client_certificate: Path = Path()
    client_key: Path = Path()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cert-file",
            str(self.certificate),
            "--key-file",
            str(self.key),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(self._trusted()),
        ]

    def _trusted(self) -> Path:
        """The CAs etcd trusts for clients: the client's, and etcd's own, since
        etcd's JSON gateway connects to etcd's gRPC server with etcd's certificate."""
        bundle = self.directory / "trusted.pem"
        self.directory.mkdir(parents=True, exist_ok=True)
        bundle.write_bytes(self.client_certificate.read_bytes() + self.certificate.read_bytes())
        return bundle

    def healthy(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._answers()

    def _answers(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.certificate))
        context.load_cert_chain(str(self.client_certificate), str(self.client_key))
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0, context=context) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[TlsEtcdServer]:
    require_etcd()
    certificate, key = self_signed(tmp_path / "certs", "etcd")
    client_certificate, client_key = self_signed(tmp_path / "certs", "client")
    client_port, peer_port = free_ports(2)
    server = TlsEtcdServer(
        client_port,
        peer_port,
        tmp_path / "etcd",
        certificate=certificate,
        key=key,
        client_certificate=client_certificate,
        client_key=client_key,
    )
    server.start()
    yield server
    server.stop()


def settings(server: TlsEtcdServer, **tls: str) -> StoreSettings:
    return StoreSettings(etcd_endpoints=[server.url], timeout_ms=2000, **tls)


async def test_a_client_certificate_and_etcd_s_own_ca(tls_etcd: TlsEtcdServer) -> None:
    good = settings(
        tls_etcd,
        etcd_ca_path=str(tls_etcd.certificate),
        etcd_cert_path=str(tls_etcd.client_certificate),
        etcd_key_path=str(tls_etcd.client_key),
    )
    async with open_store(good) as store:
        revision = await store.commit([], [Put("/tls/a", b"1")])
        assert revision is not None
        entry = await store.get("/tls/a")
        assert entry is not None and entry.value == b"1"


async def test_without_the_ca_or_the_client_certificate_nothing_gets_through(
    tls_etcd: TlsEtcdServer,
) -> None:
    # The system's CAs do not know etcd's certificate.
    async with open_store(settings(tls_etcd)) as store:
        with pytest.raises(StoreUnavailable):
            await store.get("/tls/a")
    # The right CA, but no client certificate: etcd refuses the handshake.
    async with open_store(settings(tls_etcd, etcd_ca_path=str(tls_etcd.certificate))) as store:
        with pytest.raises(StoreUnavailable):
            await store.get("/tls/a")


def test_tls_files_that_do_not_load_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.etcd_ca_path"):
        etcd_tls(StoreSettings(etcd_ca_path=str(tmp_path / "missing.pem")))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the TLS files for etcd"):
        etcd_tls(StoreSettings(etcd_ca_path=str(garbage)))
