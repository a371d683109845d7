"""Builds the Storage SCP application entity and runs its server."""

from __future__ import annotations

import logging
import ssl
import threading
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from miemss_node.receive.handlers import (
    InstanceStore,
    handle_association,
    handle_connection_closed,
    handle_echo,
    handle_store,
)
from miemss_node.receive.stream import ReceiveLimits
from miemss_node.receive.transport import ReceiverServer

if TYPE_CHECKING:
    from miemss_node.config import NodeSettings

logger = logging.getLogger(__name__)

#: Open connections allowed per association slot: room for peers that the ACSE then rejects with
#: "local limit exceeded" (a clear answer) instead of a refused connection.
CONNECTIONS_PER_ASSOCIATION = 2


def build_receiver_ae(node: NodeSettings) -> AE:
    """An AE accepting C-ECHO and C-STORE of every storage SOP class in every transfer syntax.

    Every storage class is accepted, so non-image objects (SR, SEG, ...) are stored too; the worker
    decides what it processes. Instances are stored as received, compressed or not.
    """
    ae = AE(ae_title=node.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_called_aet = node.require_called_aet
    ae.require_calling_aet = list(node.allowed_calling_aets)
    ae.maximum_pdu_size = node.max_pdu
    ae.maximum_associations = node.max_associations
    ae.acse_timeout = node.acse_timeout_seconds
    ae.dimse_timeout = node.dimse_timeout_seconds
    ae.network_timeout = node.network_timeout_seconds
    return ae


def start_receiver(
    node: NodeSettings, store: InstanceStore, ssl_context: ssl.SSLContext | None = None
) -> ReceiverServer:
    """Start the SCP in the background; ``port = 0`` binds an ephemeral port (see ``server_address``).

    Instances stream into this process's ``.incoming/`` folder, emptied first: what is there was
    never acknowledged (a crash mid-receive), so its senders still have it.
    """
    limits = ReceiveLimits(
        max_pdu=node.max_pdu,
        network_timeout=node.network_timeout_seconds,
        handshake_timeout=node.acse_timeout_seconds,
        max_instance_bytes=store.max_instance_bytes,
        min_free_bytes=store.min_free_bytes,
        spool_dir=store.layout.clear_incoming(),
    )
    ae = build_receiver_ae(node)
    handlers: list[tuple[Any, ...]] = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_ESTABLISHED, handle_association, ["established"]),
        (evt.EVT_REJECTED, handle_association, ["rejected"]),
        (evt.EVT_RELEASED, handle_association, ["released"]),
        (evt.EVT_ABORTED, handle_association, ["aborted"]),
    ]
    server = cast(
        ReceiverServer,
        ae.make_server(
        (node.host, node.port),
        evt_handlers=handlers,
        server_class=ReceiverServer,
        limits=limits,
        max_connections=node.max_associations * CONNECTIONS_PER_ASSOCIATION,
        tls_context=ssl_context,
        ),
    )
    server.bind(evt.EVT_C_STORE, handle_store, [store, server.slots])
    server.bind(evt.EVT_CONN_CLOSE, handle_connection_closed, [server.slots])
    threading.Thread(target=server.serve_forever, name="receiver", daemon=True).start()
    host, port = server.server_address[:2]
    logger.info(
        "receiver %s listening on %s:%d%s",
        node.ae_title,
        host,
        port,
        " (TLS)" if ssl_context else "",
        extra={"action": "receive.listening", "port": port},
    )
    return server


def stop_receiver(server: ReceiverServer) -> None:
    """Stop the SCP: no new connection; associations in progress end with their sockets."""
    server.shutdown()
