"""The receiver's network layer: what no peer may do to the node, enforced below pynetdicom.

pynetdicom 3.0 reads a PDU by trusting its length field (``DULServiceProvider._read_pdu_data``:
``recv(6)`` then ``recv(length)`` on a socket with no timeout), wraps TLS in the accept loop
(``AssociationServer.get_request``), caps associations only once an A-ASSOCIATE-RQ arrived, and
streams a received dataset to a temporary file with no size limit and no way to answer a failure
status before the whole dataset has been written (``_config.STORE_RECV_CHUNKED_DATASET``, a
process-wide switch). No public setting changes any of that, so this module sits between the
socket and pynetdicom, through public extension points only (``AE.make_server(server_class=...)``,
a ``request_handler`` class, and socket subclasses; ``ssl.SSLContext.sslsocket_class`` for TLS):

- every socket operation has a timeout, and a whole PDU must arrive within the network timeout;
- the TLS handshake runs in the connection's own thread, under the ACSE timeout;
- a PDU longer than the maximum we announced (``[node] max_pdu``) aborts the association with an
  A-ABORT (invalid PDU parameter value) before its body is read, so memory stays flat;
- open connections are capped (including those still in their TLS handshake);
- the dataset of each C-STORE-RQ is streamed to ``.incoming/`` here, with the instance size and
  the free disk checked on every fragment; pynetdicom then receives the P-DATA with the dataset
  fragments emptied, so it never buffers a dataset. A refused instance keeps being read (and
  dropped), and the C-STORE handler answers it with a failure status and an Error Comment.

Upstream: pynetdicom has no PDU length check or read timeout on acceptor sockets, and its
chunked receive has no size hook; no issue for either was found in pydicom/pynetdicom (the
chunked receive came with pydicom/pynetdicom#517 / #526, which left the size and folder open).
"""

from __future__ import annotations

import logging
import select
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from miemss_node.receive.stream import PduFilter, ReceiveLimits

logger = logging.getLogger(__name__)

#: Seconds a connection may exist without a live association before the sweep closes it
#: (covers the time between the handshake and the association thread's start).
ORPHAN_GRACE_SECONDS = 5.0


class _GuardedSocketMixin:
    """recv/send/shutdown/close through a :class:`PduFilter` once one is attached."""

    pdu_filter: PduFilter | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self.pdu_filter is None:
            return super().recv(bufsize, flags)  # type: ignore[misc,no-any-return]
        return self.pdu_filter.serve(bufsize)

    def raw_recv(self, bufsize: int) -> bytes:
        return super().recv(bufsize)  # type: ignore[misc,no-any-return]

    def send(self, data: bytes, flags: int = 0) -> int:
        if self.pdu_filter is not None:
            self.pdu_filter.observe_sent(data)
        return super().send(data, flags)  # type: ignore[misc,no-any-return]

    def shutdown(self, how: int) -> None:
        if self.pdu_filter is not None:
            self.pdu_filter.close()
        try:
            super().shutdown(how)  # type: ignore[misc]
        except OSError:
            # pynetdicom closes the socket only when shutdown() succeeds: close it here instead
            # of leaving the descriptor to the garbage collector.
            self.close()
            raise

    def close(self) -> None:
        if self.pdu_filter is not None:
            self.pdu_filter.close()
        super().close()  # type: ignore[misc]


class GuardedTcpSocket(_GuardedSocketMixin, socket.socket):  # type: ignore[misc]
    """A plain TCP connection of the receiver."""


class GuardedTlsSocket(_GuardedSocketMixin, ssl.SSLSocket):  # type: ignore[misc]
    """A TLS connection of the receiver (made by an ``SSLContext`` whose ``sslsocket_class`` it is)."""


class ConnectionSlots:
    """The receiver's open connections, capped; each one's filter, found by the peer's address."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], PduFilter | None] = {}
        self._sockets: dict[tuple[str, int], tuple[socket.socket, float]] = {}

    def admit(self, peer: tuple[str, int]) -> bool:
        """Take a slot for a new connection; False when every slot is taken."""
        with self._lock:
            if len(self._open) >= self.cap:
                return False
            self._open[peer] = None
            return True

    def attach(self, peer: tuple[str, int], pdu_filter: PduFilter, sock: socket.socket) -> None:
        """Remember the filter and socket of an admitted connection."""
        with self._lock:
            self._open[peer] = pdu_filter
            self._sockets[peer] = (sock, time.monotonic())

    def release(self, peer: tuple[str, int]) -> None:
        """Free a connection's slot."""
        with self._lock:
            self._open.pop(peer, None)
            self._sockets.pop(peer, None)

    def orphans(self, live: set[tuple[str, int]], grace: float) -> list[tuple[PduFilter | None, socket.socket]]:
        """Connections older than ``grace`` seconds whose peer has no live association."""
        now = time.monotonic()
        with self._lock:
            return [
                (self._open.get(peer), sock)
                for peer, (sock, since) in self._sockets.items()
                if peer not in live and now - since > grace
            ]

    def filter_of(self, peer: tuple[str, int]) -> PduFilter | None:
        """The filter of a connected peer, if any."""
        with self._lock:
            return self._open.get(peer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


class GuardedRequestHandler(RequestHandler):
    """Wraps the accepted socket (TLS handshake included) before pynetdicom starts the association."""

    server: ReceiverServer

    def handle(self) -> None:
        peer = (str(self.client_address[0]), int(self.client_address[1]))
        try:
            self.request = self.server.guard(self.request, peer)
        except (OSError, ValueError) as exc:
            self.server.slots.release(peer)
            # A peer that closes before (or during) the handshake is a port probe or a load
            # balancer's check; a timeout or a refused certificate is worth a warning.
            closed = isinstance(exc, (ssl.SSLEOFError, ConnectionError))
            logger.log(
                logging.INFO if closed else logging.WARNING,
                "connection from %s:%d dropped before association: %s",
                peer[0],
                peer[1],
                exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__,
                extra={"action": "receive.handshake_failed", "peer": f"{peer[0]}:{peer[1]}"},
            )
            _close_quietly(self.request)
            return
        super().handle()


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the limits of :class:`ReceiveLimits` on every connection.

    Built by ``AE.make_server(..., server_class=ReceiverServer, limits=..., tls_context=...)``.
    """

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        limits: ReceiveLimits,
        max_connections: int,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if ssl_context is not None:
            raise ValueError("pass the TLS context as tls_context: the handshake must not run in the accept loop")
        super().__init__(
            ae, address, ae_title, contexts, None, evt_handlers=evt_handlers, request_handler=GuardedRequestHandler
        )
        self.limits = limits
        self.slots = ConnectionSlots(max_connections)
        self._next_sweep = 0.0
        self.tls_context = tls_context
        if tls_context is not None:
            tls_context.sslsocket_class = GuardedTlsSocket

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # The server was made without an ssl_context, so pynetdicom only accepts: TLS comes later,
        # in the connection's own thread (``guard``), and never blocks the accept loop.
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stall
        client.settimeout(self.limits.network_timeout)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        peer = (str(client_address[0]), int(client_address[1]))
        if self.slots.admit(peer):
            return True
        logger.warning(
            "connection from %s:%d refused: %d connections open",
            peer[0],
            peer[1],
            self.slots.cap,
            extra={"action": "receive.connection_refused", "peer": f"{peer[0]}:{peer[1]}"},
        )
        return False

    def guard(self, raw: socket.socket, peer: tuple[str, int]) -> socket.socket:
        """Wrap an accepted socket: TLS handshake (bounded), then the PDU filter."""
        limits = self.limits
        guarded: GuardedTcpSocket | GuardedTlsSocket
        if self.tls_context is not None:
            guarded = _handshake(self.tls_context, raw, limits.handshake_timeout)
        else:
            guarded = GuardedTcpSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        guarded.settimeout(limits.network_timeout)
        label = f"{peer[0]}:{peer[1]}"
        pdu_filter = PduFilter(
            guarded.raw_recv, guarded.sendall, guarded.settimeout, limits, label, lambda: self.slots.release(peer)
        )
        guarded.pdu_filter = pdu_filter
        self.slots.attach(peer, pdu_filter, guarded)
        return guarded

    def service_actions(self) -> None:
        """Once a second (from the accept loop): close connections whose association is gone.

        A race in pynetdicom's state machine (an A-ASSOCIATE response primitive arriving in Sta13
        after the peer aborted; cf. pydicom/pynetdicom#721) can end the DUL thread with an
        InvalidEventError, leaving its socket open and its slot taken; this frees them.
        """
        super().service_actions()
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        live = {
            (str(assoc.requestor.address), int(assoc.requestor.port))
            for assoc in self.active_associations
            if assoc.is_alive() and assoc.dul.is_alive()
        }
        for pdu_filter, sock in self.slots.orphans(live, grace=ORPHAN_GRACE_SECONDS):
            logger.info(
                "closing connection %s: its association ended without closing it",
                pdu_filter.peer if pdu_filter else "?",
                extra={"action": "receive.orphan_closed"},
            )
            if pdu_filter is not None:
                pdu_filter.close()
            _close_quietly(sock)

    def shutdown(self) -> None:
        # AssociationServer.shutdown also deregisters the server from the AE's private list of
        # servers it started itself (start_server); ours was made with make_server, so stop the
        # loop and close the socket as socketserver and pynetdicom do, without that step.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def _handshake(context: ssl.SSLContext, raw: socket.socket, timeout: float) -> GuardedTlsSocket:
    """The server side of the TLS handshake, finished within ``timeout`` seconds in all.

    A per-operation socket timeout is not enough: a peer sending a byte every few seconds would
    keep a blocking handshake going for ever, so the handshake is driven without blocking.
    """
    tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    assert isinstance(tls, GuardedTlsSocket)
    deadline = time.monotonic() + timeout
    tls.setblocking(False)
    wait: tuple[list[socket.socket], list[socket.socket]]
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                wait = ([tls], [])
            except ssl.SSLWantWriteError:
                wait = ([], [tls])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(wait[0], wait[1], [], remaining)[:2]):
                raise TimeoutError(f"TLS handshake not finished in {timeout:g} s")
    except BaseException:
        tls.close()
        raise


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def release_connection(slots: ConnectionSlots, address: str, port: int) -> None:
    """EVT_CONN_CLOSE glue: close the filter of a connection that pynetdicom closed."""
    pdu_filter = slots.filter_of((address, port))
    if pdu_filter is not None:
        pdu_filter.close()
    slots.release((address, port))
