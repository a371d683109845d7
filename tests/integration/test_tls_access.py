"""TLS for receiving and sending, and association access control."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from miemss_node.config import Config, Destination, TlsSettings
from miemss_node.node import Node
from miemss_node.send import SendOutcome, send_files
from miemss_node.tls import client_context
from tests.support.certificates import Certificates, make_certificates
from tests.support.peers import PacsScp


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def tls_settings(certs: Certificates, *, require_client: bool = True) -> TlsSettings:
    return TlsSettings(
        enabled=True,
        certificate=str(certs.server_cert),
        private_key=str(certs.server_key),
        ca_certificates=str(certs.ca),
        require_client_certificate=require_client,
    )


def echo(port: int, *, tls_args: tuple[ssl.SSLContext, str] | None, calling: str = "MODALITY", called: str = "MIEMSS") -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return bool(ok)


def client_tls(certs: Certificates, *, with_certificate: bool) -> tuple[ssl.SSLContext, str]:
    settings = TlsSettings(
        ca_certificates=str(certs.ca),
        certificate=str(certs.client_cert) if with_certificate else "",
        private_key=str(certs.client_key) if with_certificate else "",
    )
    return client_context(settings), "127.0.0.1"


def test_receiver_over_tls_requires_a_client_certificate(
    certs: Certificates, config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    config = replace(config_factory(), tls=tls_settings(certs))
    node = node_factory(replace(config, worker=replace(config.worker, count=0)))
    assert echo(node.port, tls_args=client_tls(certs, with_certificate=True))
    assert not echo(node.port, tls_args=client_tls(certs, with_certificate=False))
    assert not echo(node.port, tls_args=None)  # plain DICOM on a TLS port


def test_sender_verifies_a_tls_pacs_and_delivers(certs: Certificates, tmp_path: Path) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    pacs = PacsScp(ae_title="TLSPACS", ssl_context=server)
    try:
        destination = Destination(name="tls", ae_title="TLSPACS", host="127.0.0.1", port=pacs.port, tls=True)
        source = Path(get_testdata_file("CT_small.dcm"))
        trusted = client_context(TlsSettings(ca_certificates=str(certs.ca)))
        report = send_files([source], destination, calling_aet="MIEMSS", timeout_seconds=5, ssl_context=trusted)
        assert report.outcome is SendOutcome.DELIVERED
        assert pacs.received[0].SOPInstanceUID == dcmread(source).SOPInstanceUID
        untrusted = client_context(TlsSettings())  # system CAs only: our test CA is unknown
        refused = send_files([source], destination, calling_aet="MIEMSS", timeout_seconds=5, ssl_context=untrusted)
        assert refused.outcome is SendOutcome.RETRY
        assert len(pacs.received) == 1
    finally:
        pacs.stop()


def test_called_ae_title_is_checked_when_required(
    config_factory: Callable[..., Config], node_factory: Callable[[Config], Node]
) -> None:
    config = config_factory()
    node = node_factory(replace(config, node=replace(config.node, require_called_aet=True), worker=replace(config.worker, count=0)))
    assert echo(node.port, tls_args=None, called="MIEMSS")
    assert not echo(node.port, tls_args=None, called="SOMEONE")


def test_tls_without_certificate_files_is_a_config_error(tmp_path: Path) -> None:
    from miemss_node.config import load_config
    from miemss_node.errors import ConfigError

    path = tmp_path / "config.toml"
    path.write_text("[tls]\nenabled = true\nca_certificates = 'missing.pem'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="needs certificate and private_key") as caught:
        load_config(path, environ={})
    assert any("missing.pem" in problem and "is not a file" in problem for problem in caught.value.problems)
