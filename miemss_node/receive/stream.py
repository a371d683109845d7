"""One receiver connection's byte stream: whole PDUs checked, C-STORE datasets streamed to disk.

:class:`PduFilter` reads one whole PDU at a time from the socket (a timeout on every read, the whole
PDU within the network timeout), refuses a PDU longer than the maximum announced, checks the PDV
items of P-DATA-TF PDUs (PS3.8 9.3.5), and writes the dataset fragments of each C-STORE-RQ to a
file in ``.incoming/`` while checking the instance size and the free disk; pynetdicom then gets the
PDU with those fragments emptied. The C-STORE handler takes the file (or the refusal) with
:meth:`PduFilter.take`. :mod:`miemss_node.receive.transport` puts the filter under pynetdicom.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta

from miemss_node.receive.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_TOO_LARGE,
)
from miemss_node.storage import free_bytes, is_valid_uid

logger = logging.getLogger(__name__)

#: Largest PDU other than P-DATA-TF we read (an A-ASSOCIATE-RQ of 128 presentation contexts with
#: many transfer syntaxes is some 150 KB; the standard sets no maximum for it).
MAX_CONTROL_PDU = 1 << 20

#: Largest command set (a few hundred bytes in practice).
MAX_COMMAND_BYTES = 64 << 10

#: Largest dataset passed on to pynetdicom for a message that is not a C-STORE-RQ (we provide no
#: such service; pynetdicom refuses it, but would first buffer the dataset in memory).
MAX_OTHER_DATASET = 1 << 20

#: Received instances whose C-STORE handler has not run yet, per connection (pynetdicom answers
#: one message at a time, so more means a peer that is not waiting for answers).
MAX_PENDING_INSTANCES = 16

#: How often (bytes written) the free disk is measured while an instance streams in.
DISK_CHECK_BYTES = 1 << 20

#: A-ABORT reasons (PS3.8 9.3.8, source 2 = service provider).
ABORT_UNEXPECTED_PDU_PARAMETER = 0x05
ABORT_INVALID_PDU_PARAMETER_VALUE = 0x06

_A_ASSOCIATE_RQ = 0x01
_P_DATA_TF = 0x04
_A_ASSOCIATE_AC = 0x02
_C_STORE_RQ = 0x0001
_NO_DATASET = 0x0101


@dataclass(frozen=True, kw_only=True)
class ReceiveLimits:
    """What one connection may use.

    Parameters
    ----------
    max_pdu
        The Maximum Length we announce: the longest P-DATA-TF PDU we read.
    network_timeout
        Seconds a socket operation, and the whole of one PDU, may take.
    handshake_timeout
        Seconds the TLS handshake may take.
    max_instance_bytes
        Largest dataset of one C-STORE (0: no limit).
    min_free_bytes
        Free disk that must remain while an instance streams in.
    spool_dir
        Where received datasets stream to (on the storage disk).
    """

    max_pdu: int
    network_timeout: float
    handshake_timeout: float
    max_instance_bytes: int
    min_free_bytes: int
    spool_dir: Path


@dataclass(kw_only=True)
class ReceivedFile:
    """The dataset of one C-STORE-RQ as streamed in: a file with File Meta, or why it was refused."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    #: The file (preamble, File Meta, dataset); None when refused.
    path: Path | None
    #: Bytes of the dataset (without File Meta).
    size_bytes: int = 0
    #: SHA-256 of the dataset bytes as received.
    digest: str = ""
    #: (status, reason) when the instance was refused while streaming.
    refusal: tuple[int, str] | None = None


class _Drop(Exception):
    """The connection must end: ``reason`` is logged; ``abort`` (a reason code) sends an A-ABORT."""

    def __init__(self, reason: str, abort: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.abort = abort


@dataclass(kw_only=True)
class _Message:
    """The DIMSE message whose fragments are arriving."""

    context_id: int
    command: bytearray = field(default_factory=bytearray)
    command_done: bool = False
    #: The C-STORE-RQ being streamed to disk; None for other messages.
    received: ReceivedFile | None = None
    handle: BinaryIO | None = None
    hasher: Any = None
    unchecked_bytes: int = 0
    other_bytes: int = 0


class PduFilter:
    """Reads whole PDUs from one connection, checks them, streams C-STORE datasets to disk, and
    serves pynetdicom the (rewritten) PDUs.

    pynetdicom asks for 6 bytes, then for the PDU's length; the first call reads one whole PDU
    (never more, so ``select`` on the socket stays truthful), the next ones are served from it.
    """

    def __init__(
        self,
        raw_recv: Callable[[int], bytes],
        raw_send: Callable[[bytes], None],
        set_timeout: Callable[[float], None],
        limits: ReceiveLimits,
        peer: str,
        on_close: Callable[[], None],
    ) -> None:
        self._recv = raw_recv
        self._send = raw_send
        self._set_timeout = set_timeout
        self.limits = limits
        self.peer = peer
        self._on_close = on_close
        self._buffer = b""
        self._pos = 0
        self._dead = False
        self._closed = False
        self._lock = threading.Lock()
        self._contexts: dict[int, str] | None = None
        self._message: _Message | None = None
        self._pending: dict[int, ReceivedFile] = {}

    # -- pynetdicom's side --------------------------------------------------------------------

    def serve(self, bufsize: int) -> bytes:
        """Return up to ``bufsize`` bytes of the current PDU; b"" once the connection is over."""
        if self._pos >= len(self._buffer):
            if self._dead:
                return b""
            try:
                pdu = self._next_pdu()
            except _Drop as drop:
                self._drop(drop)
                return b""
            except TimeoutError:
                self._drop(_Drop(f"no data for {self.limits.network_timeout:g} s in the middle of a PDU"))
                return b""
            except OSError as exc:
                logger.info(
                    "connection from %s ended: %s",
                    self.peer,
                    exc.strerror or type(exc).__name__,
                    extra={"action": "receive.connection_lost", "peer": self.peer},
                )
                self._dead = True
                self.close()
                return b""
            if pdu is None:
                self._dead = True
                return b""
            self._buffer, self._pos = pdu, 0
        chunk = self._buffer[self._pos : self._pos + bufsize]
        self._pos += len(chunk)
        if self._pos >= len(self._buffer):
            self._buffer, self._pos = b"", 0
        return chunk

    def observe_sent(self, data: bytes) -> None:
        """Learn each accepted context's transfer syntax from our A-ASSOCIATE-AC (PS3.8 9.3.3)."""
        if self._contexts is None and data[:1] == bytes([_A_ASSOCIATE_AC]) and len(data) >= 74:
            self._contexts = _accepted_contexts(data)

    def take(self, message_id: int) -> ReceivedFile | None:
        """The received file of a C-STORE-RQ; the caller then owns (and deletes) the file."""
        with self._lock:
            return self._pending.pop(message_id, None)

    def close(self) -> None:
        """Delete what was received but not handed over; release the connection slot (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            leftovers = list(self._pending.values())
            self._pending.clear()
            message = self._message
        if message is not None and message.received is not None:
            _discard(message)
        for received in leftovers:
            if received.path is not None:
                received.path.unlink(missing_ok=True)
        self._on_close()

    # -- reading ------------------------------------------------------------------------------

    def _read(self, count: int, deadline: float) -> bytes | None:
        parts: list[bytes] = []
        got = 0
        while got < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._set_timeout(remaining)
            data = self._recv(min(count - got, 1 << 16))
            if not data:
                return None
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def _next_pdu(self) -> bytes | None:
        deadline = time.monotonic() + self.limits.network_timeout
        header = self._read(6, deadline)
        if header is None:
            return None
        pdu_type = header[0]
        (length,) = struct.unpack(">L", header[2:6])
        if not 0x01 <= pdu_type <= 0x07:
            return header  # pynetdicom answers an unknown PDU type with an A-ABORT
        limit = self.limits.max_pdu if pdu_type == _P_DATA_TF else MAX_CONTROL_PDU
        if length > limit:
            raise _Drop(
                f"PDU of type 0x{pdu_type:02X} announces {length} bytes, more than the {limit} negotiated",
                abort=ABORT_INVALID_PDU_PARAMETER_VALUE,
            )
        body = self._read(length, deadline)
        if body is None:
            return None
        if pdu_type == _A_ASSOCIATE_RQ and len(body) >= 36 and not (body[4:20].strip() and body[20:36].strip()):
            # pynetdicom's state machine raises on a blank AE title and its DUL thread dies.
            raise _Drop("A-ASSOCIATE-RQ with a blank AE title", abort=ABORT_INVALID_PDU_PARAMETER_VALUE)
        if pdu_type == _P_DATA_TF:
            body = self._filter_pdata(body)
        return header[:2] + struct.pack(">L", len(body)) + body

    def _drop(self, drop: _Drop) -> None:
        logger.warning(
            "connection from %s dropped: %s",
            self.peer,
            drop.reason,
            extra={"action": "receive.connection_dropped", "peer": self.peer},
        )
        self._dead = True
        if drop.abort is not None:
            try:
                self._set_timeout(1.0)
                self._send(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, drop.abort))
            except OSError:
                pass
        self.close()

    # -- P-DATA-TF ----------------------------------------------------------------------------

    def _filter_pdata(self, body: bytes) -> bytes:
        """Check the PDV items (PS3.8 9.3.5); stream C-STORE dataset fragments to disk and empty them."""
        out: list[bytes] = []
        view = memoryview(body)
        position = 0
        while position < len(body):
            if position + 6 > len(body):
                raise _Drop("truncated PDV item", abort=ABORT_INVALID_PDU_PARAMETER_VALUE)
            (item_length,) = struct.unpack(">L", body[position : position + 4])
            end = position + 4 + item_length
            if item_length < 2 or end > len(body):
                raise _Drop("PDV item length outside its PDU", abort=ABORT_INVALID_PDU_PARAMETER_VALUE)
            context_id, control = body[position + 4], body[position + 5]
            data = view[position + 6 : end]
            if control & 0x01:
                self._command_fragment(context_id, control, data)
                out.append(body[position:end])
            elif self._dataset_fragment(control, data):
                out.append(struct.pack(">LBB", 2, context_id, control))  # pynetdicom gets no bytes
            else:
                out.append(body[position:end])
            position = end
        return b"".join(out)

    def _command_fragment(self, context_id: int, control: int, data: memoryview) -> None:
        message = self._message
        if message is None or message.command_done:
            if message is not None and message.received is not None:
                _discard(message)  # a new command before the last dataset fragment
            message = self._message = _Message(context_id=context_id)
        message.command += data
        if len(message.command) > MAX_COMMAND_BYTES:
            raise _Drop("command set too long", abort=ABORT_INVALID_PDU_PARAMETER_VALUE)
        if control & 0x02:
            message.command_done = True
            self._start_dataset(message)

    def _start_dataset(self, message: _Message) -> None:
        try:
            command = read_dataset(BytesIO(bytes(message.command)), True, True)
            is_store = int(command.CommandField) == _C_STORE_RQ
            has_dataset = int(command.CommandDataSetType) != _NO_DATASET
            message_id = int(command.MessageID) if is_store else 0
            sop_class = str(command.AffectedSOPClassUID) if is_store else ""
            sop_instance = str(command.AffectedSOPInstanceUID) if is_store else ""
        except Exception:  # noqa: BLE001 - untrusted bytes; pynetdicom refuses the message itself
            return
        if not (is_store and has_dataset):
            return
        syntax = (self._contexts or {}).get(message.context_id, "")
        received = ReceivedFile(
            message_id=message_id,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=syntax,
            path=None,
        )
        message.received = received
        message.hasher = hashlib.sha256()
        if not (syntax and is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
            received.refusal = (STATUS_CANNOT_UNDERSTAND, "invalid UID or context in the C-STORE request")
            return
        path = self.limits.spool_dir / f"{uuid.uuid4().hex}.part"
        try:
            self.limits.spool_dir.mkdir(parents=True, exist_ok=True)
            handle = open(path, "xb")  # noqa: SIM115 - closed in _finish_message or _discard
            received.path = path
            message.handle = handle
            handle.write(b"\x00" * 128 + b"DICM")
            meta = create_file_meta(
                sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance), transfer_syntax=UID(syntax)
            )
            write_file_meta_info(handle, meta)  # type: ignore[arg-type]
        except OSError as exc:
            self._refuse(message, STATUS_OUT_OF_RESOURCES, f"cannot write to the storage disk: {exc.strerror or exc}")

    def _dataset_fragment(self, control: int, data: memoryview) -> bool:
        """Handle one dataset fragment; True when it was taken (so pynetdicom must not get it)."""
        message = self._message
        taken = message is not None and message.command_done and message.received is not None
        if message is not None and taken:
            if message.handle is not None:
                self._write(message, data)
        else:
            other = message if message is not None else self._message_for_stray()
            other.other_bytes += len(data)
            if other.other_bytes > MAX_OTHER_DATASET:
                raise _Drop("dataset of a message we do not store is too long", abort=ABORT_UNEXPECTED_PDU_PARAMETER)
        if control & 0x02:
            if message is not None and message.received is not None:
                self._finish_message(message)
            self._message = None
        return taken

    def _message_for_stray(self) -> _Message:
        self._message = _Message(context_id=0, command_done=True)
        return self._message

    def _write(self, message: _Message, data: memoryview) -> None:
        received = message.received
        assert received is not None and message.handle is not None
        limits = self.limits
        size = received.size_bytes + len(data)
        if limits.max_instance_bytes and size > limits.max_instance_bytes:
            self._refuse(
                message, STATUS_TOO_LARGE, f"instance exceeds max_instance_mb ({limits.max_instance_bytes // 2**20} MB)"
            )
            return
        message.unchecked_bytes += len(data)
        if limits.min_free_bytes and (received.size_bytes == 0 or message.unchecked_bytes >= DISK_CHECK_BYTES):
            message.unchecked_bytes = 0
            free = free_bytes(limits.spool_dir)
            if free - len(data) < limits.min_free_bytes:
                self._refuse(message, STATUS_OUT_OF_RESOURCES, f"storage disk full ({free // 2**20} MB free)")
                return
        try:
            message.handle.write(data)
        except OSError as exc:
            self._refuse(message, STATUS_OUT_OF_RESOURCES, f"storage disk refused the write: {exc.strerror or exc}")
            return
        message.hasher.update(data)
        received.size_bytes = size

    def _refuse(self, message: _Message, status: int, reason: str) -> None:
        received = message.received
        assert received is not None
        _discard(message)
        received.refusal = (status, reason)
        logger.warning(
            "instance %s from %s refused while receiving: %s",
            received.sop_instance_uid,
            self.peer,
            reason,
            extra={"action": "receive.refused_streaming", "sop_instance_uid": received.sop_instance_uid},
        )

    def _finish_message(self, message: _Message) -> None:
        received = message.received
        assert received is not None
        if message.handle is not None:
            try:
                message.handle.close()
            except OSError as exc:
                _discard(message)
                received.refusal = (STATUS_OUT_OF_RESOURCES, f"storage disk refused the write: {exc.strerror or exc}")
            message.handle = None
        received.digest = message.hasher.hexdigest() if received.refusal is None else ""
        with self._lock:
            if self._closed:
                stale = [received]
            else:
                self._pending[received.message_id] = received
                stale = []
                while len(self._pending) > MAX_PENDING_INSTANCES:
                    stale.append(self._pending.pop(next(iter(self._pending))))
        for item in stale:
            if item.path is not None:
                item.path.unlink(missing_ok=True)


def _discard(message: _Message) -> None:
    """Close and delete the partial file of a message."""
    received = message.received
    if message.handle is not None:
        try:
            message.handle.close()
        except OSError:
            pass
        message.handle = None
    if received is not None and received.path is not None:
        received.path.unlink(missing_ok=True)
        received.path = None


def _accepted_contexts(pdu: bytes) -> dict[int, str]:
    """Context ID -> transfer syntax of the accepted contexts of an A-ASSOCIATE-AC PDU."""
    contexts: dict[int, str] = {}
    (length,) = struct.unpack(">L", pdu[2:6])
    end = min(len(pdu), 6 + length)
    position = 74  # PDU header (6) + protocol version, reserved, AE titles, reserved (68)
    while position + 4 <= end:
        item_type = pdu[position]
        (item_length,) = struct.unpack(">H", pdu[position + 2 : position + 4])
        item_end = position + 4 + item_length
        if item_type == 0x21 and item_length >= 4 and pdu[position + 6] == 0:  # result 0: acceptance
            sub = position + 8
            if sub + 4 <= item_end and pdu[sub] == 0x40:
                (sub_length,) = struct.unpack(">H", pdu[sub + 2 : sub + 4])
                syntax = pdu[sub + 4 : sub + 4 + sub_length].rstrip(b"\x00 ").decode("ascii", "replace")
                contexts[pdu[position + 4]] = syntax
        position = item_end
    return contexts


def remove_file(path: Path | None) -> None:
    """Delete a received file once its handler is done with it."""
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
