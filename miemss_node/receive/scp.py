"""Builds the Storage SCP application entity and runs its server."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from miemss_node.receive.handlers import InstanceStore, handle_association, handle_echo, handle_store

if TYPE_CHECKING:
    from miemss_node.config import NodeSettings

logger = logging.getLogger(__name__)


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


class NoDelayAssociationServer(ThreadedAssociationServer):
    """An association server whose accepted sockets send without Nagle's delay.

    pynetdicom leaves Nagle's algorithm on; every C-STORE response then waits for the peer's
    delayed ACK (about 40 ms), which caps a sender at some 25 instances a second.
    """

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = super().get_request()
        client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client_socket, address


def enable_chunked_receive(storage_dir: Path) -> None:
    """Have pynetdicom stream each received dataset to a file on the storage disk.

    The dataset then never sits whole in memory, and the handler links the file into place
    instead of writing it a second time. Both settings are process-wide, which is why only the
    receiving process calls this: pynetdicom's ``STORE_RECV_CHUNKED_DATASET``, and the folder of
    its temporary files (``tempfile.tempdir``), moved onto the storage disk so a link works.
    """
    root = storage_dir / ".incoming"
    host = socket.gethostname()
    # Partial files of receivers on this host that died mid-receive were never acknowledged.
    for folder in root.glob(f"{host}-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
    incoming = root / f"{host}-{os.getpid()}"  # receivers sharing a storage folder keep apart
    incoming.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(incoming)
    _config.STORE_RECV_CHUNKED_DATASET = True


def start_receiver(
    node: NodeSettings, store: InstanceStore, ssl_context: ssl.SSLContext | None = None
) -> ThreadedAssociationServer:
    """Start the SCP in the background; ``port = 0`` binds an ephemeral port (see ``server_address``)."""
    if node.chunked_receive:
        enable_chunked_receive(store.storage_dir)
    ae = build_receiver_ae(node)
    handlers: list[tuple[Any, ...]] = [(evt.EVT_C_ECHO, handle_echo), (evt.EVT_C_STORE, handle_store, [store])]
    handlers += [
        (evt.EVT_ESTABLISHED, handle_association, ["established"]),
        (evt.EVT_REJECTED, handle_association, ["rejected"]),
        (evt.EVT_RELEASED, handle_association, ["released"]),
        (evt.EVT_ABORTED, handle_association, ["aborted"]),
    ]
    server = ae.make_server(
        (node.host, node.port), evt_handlers=handlers, ssl_context=ssl_context, server_class=NoDelayAssociationServer
    )
    ae._servers.append(server)  # what start_server() does, so that server.shutdown() can deregister it
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


def stop_receiver(server: ThreadedAssociationServer) -> None:
    """Stop the SCP and undo :func:`enable_chunked_receive`'s process-wide settings."""
    server.shutdown()
    tempfile.tempdir = None
    _config.STORE_RECV_CHUNKED_DATASET = False
