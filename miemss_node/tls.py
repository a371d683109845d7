"""TLS contexts for the receiver and the sender (DICOM over TLS, PS3.15 Annex B.9)."""

from __future__ import annotations

import ssl

from miemss_node.config import TlsSettings


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The receiver's context, or None when ``[tls] enabled`` is false.

    TLS 1.2 at least; client certificates are verified against ``ca_certificates`` when required.
    """
    if not tls.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key)
    if tls.ca_certificates:
        context.load_verify_locations(tls.ca_certificates)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """The sender's context: verifies the destination against ``ca_certificates``.

    Our certificate is presented when configured, for destinations that require client certificates.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_certificates or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate and tls.private_key:
        context.load_cert_chain(tls.certificate, tls.private_key)
    return context
