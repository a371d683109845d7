"""The one health probe of the receiver, used by ``miemss-node healthcheck`` and by ``/healthz``.

It associates with the node as a peer would, with the node's own settings: the node's AE title
as the called AE title, TLS when ``[tls] enabled`` (presenting the node's certificate, for a
receiver that requires client certificates), and the node's address. Its calling AE title is
``MIEMSS-HEALTH``, or, when ``allowed_calling_aets`` is set, the first title there, so the receiver
accepts it like any allowed peer instead of rejecting it (and logging that) at every probe; the
probe only ever sends C-ECHO. A C-ECHO answered with Success is healthy.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miemss_node.config import Config

#: Calling AE title of the probe's association.
PROBE_AET = "MIEMSS-HEALTH"



def probe_calling_aet(config: Config) -> str:
    """The probe's calling AE title: one the receiver accepts."""
    allowed = config.node.allowed_calling_aets
    return allowed[0] if allowed else PROBE_AET


def probe_host(host: str) -> str:
    """Where to reach a receiver that listens on ``host``: loopback for a wildcard address."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def probe_tls_context(config: Config) -> ssl.SSLContext | None:
    """The probe's TLS context, None when the receiver speaks plain DICOM.

    The receiver's certificate is verified against ``[tls] ca_certificates`` when they are set, but
    not its host name: the probe reaches the node by its listening address, often loopback, which the
    certificate need not name. The node's certificate is presented, as when it sends.
    """
    from miemss_node.tls import client_context

    if not config.tls.enabled:
        return None
    context = client_context(config.tls)
    context.check_hostname = False
    if not config.tls.ca_certificates:
        context.verify_mode = ssl.CERT_NONE  # nothing to verify against; it is our own receiver
    return context


def receiver_problem(config: Config, *, port: int | None = None, timeout_seconds: float = 5.0) -> str | None:
    """None when the node's receiver answers, else why not (one line, no patient data).

    Parameters
    ----------
    config
        The node's configuration: host, port, AE title, TLS.
    port
        The port to probe instead of ``[node] port`` (a node started on port 0).
    timeout_seconds
        ACSE, DIMSE and network timeout of the probe.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    host = probe_host(config.node.host)
    port = config.node.port if port is None else port
    called = config.node.ae_title
    where = f"{called}@{host}:{port}{' (TLS)' if config.tls.enabled else ''}"
    try:
        context = probe_tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot build the TLS context of the probe from [tls]: {exc}"
    ae = AE(ae_title=probe_calling_aet(config))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_seconds
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called, tls_args=None if context is None else (context, host))
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        reason = f"source {getattr(primitive, 'result_source', '?')}, reason {getattr(primitive, 'diagnostic', '?')}"
        return f"receiver {where} rejected the association ({reason}, PS3.8 9.3.4)"
    if not assoc.is_established:
        return f"receiver {where} did not answer an association; is `serve` running?"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if "Status" in status and int(status.Status) == 0:
        return None
    return f"receiver {where} did not answer C-ECHO with Success"
