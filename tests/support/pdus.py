"""Hypothesis strategies for DICOM Upper Layer PDUs and association sequences (PS3.8 9.3), and a
harness that plays one sequence against a receiver over a raw socket.

A sequence is a list of byte strings sent in order: well-formed PDUs (A-ASSOCIATE-RQ, P-DATA-TF
carrying C-ECHO and C-STORE messages, A-RELEASE-RQ, A-ABORT), the same with lying lengths, flipped
bits or cut short, and plain garbage. The harness then half-closes (or, sometimes, leaves the
connection open, which the receiver must time out) and reads until the receiver closes.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from dataclasses import dataclass

from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode

VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + (b"\x00" if len(raw) % 2 else b"")


def pdu(pdu_type: int, body: bytes, *, length: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte length (the true one unless ``length`` lies), body."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def associate_rq(contexts: list[tuple[int, str, list[str]]], *, called: str = "MIEMSS", calling: str = "FUZZER",
                 max_length: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing ``(context id, abstract syntax, syntaxes)``."""
    variable = _item(0x10, _uid(APPLICATION_CONTEXT))
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(ts)) for ts in syntaxes)
        variable += _item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    variable += _item(0x50, _item(0x51, struct.pack(">L", max_length)) + _item(0x52, _uid("1.2.3.4")))
    fixed = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    return pdu(0x01, fixed + variable)


def command_set(command_field: int, message_id: int, *, sop_class: str, sop_instance: str = "",
                has_dataset: bool) -> bytes:
    """An encoded DIMSE command set (Implicit VR Little Endian, with its group length)."""
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = command_field
    ds.MessageID = message_id
    if command_field == 0x0001:
        ds.Priority = 0
        ds.AffectedSOPInstanceUID = sop_instance
    ds.CommandDataSetType = 0x0001 if has_dataset else 0x0101
    body = bytes(encode(ds, True, True))
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def p_data(items: list[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF PDU of ``(context id, message control header, data)`` PDV items (PS3.8 9.3.5)."""
    return pdu(0x04, b"".join(struct.pack(">LBB", 2 + len(data), ctx, hdr) + data for ctx, hdr, data in items))


RELEASE_RQ = pdu(0x05, bytes(4))

#: Replies after which the association is over: A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT.
_FINAL_REPLIES = (0x03, 0x06, 0x07)
ABORT = pdu(0x07, bytes([0, 0, 0, 0]))

uids = st.builds(lambda parts: "1.2.826.0.1.3680043.8.498." + ".".join(str(p) for p in parts),
                 st.lists(st.integers(1, 10**9), min_size=1, max_size=3))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` as sent, or with flipped bits, cut short, or with a lying length."""
    how = draw(st.sampled_from(["as is", "as is", "flip", "cut", "length"]))
    if how == "flip" and data:
        raw = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=8)):
            raw[position // 8] ^= 1 << (position % 8)
        return bytes(raw)
    if how == "cut" and len(data) > 1:
        return data[: draw(st.integers(1, len(data) - 1))]
    if how == "length" and len(data) >= 6:
        lie = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(-8, 8).map(lambda d: max(0, len(data) - 6 + d))))
        return data[:2] + struct.pack(">L", lie) + data[6:]
    return data


@st.composite
def store_messages(draw: st.DrawFn, context_id: int) -> list[bytes]:
    """The P-DATA-TF PDUs of one C-STORE-RQ: the command, then dataset fragments of random sizes."""
    message_id = draw(st.integers(0, 0xFFFF))
    command = command_set(0x0001, message_id, sop_class=CT_STORAGE, sop_instance=draw(uids), has_dataset=True)
    pdus = [p_data([(context_id, 0x03, command)])]
    dataset = Dataset()
    dataset.SOPClassUID = CT_STORAGE
    dataset.SOPInstanceUID = draw(uids)
    dataset.StudyInstanceUID = draw(uids)
    dataset.SeriesInstanceUID = draw(uids)
    encoded = bytes(encode(dataset, True, True)) + draw(st.binary(max_size=3000))
    cuts = sorted(draw(st.lists(st.integers(0, len(encoded)), max_size=4)))
    bounds = [0, *cuts, len(encoded)]
    fragments = [encoded[a:b] for a, b in itertools.pairwise(bounds)]
    for index, fragment in enumerate(fragments):
        last = index == len(fragments) - 1 and draw(st.booleans() | st.just(True))
        pdus.append(p_data([(context_id, 0x02 if last else 0x00, fragment)]))
    return pdus


@st.composite
def association_sequences(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """A sequence of chunks to send, and whether to half-close the connection afterwards."""
    contexts = [(1, VERIFICATION, [str(ImplicitVRLittleEndian)]),
                (3, CT_STORAGE, [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)])]
    steps: list[bytes] = []
    if draw(st.integers(0, 9)) > 0:
        called = draw(st.sampled_from(["MIEMSS", "MIEMSS", "OTHER", ""]))
        steps.append(draw(mutated(associate_rq(contexts, called=called, max_length=draw(st.sampled_from([0, 4096, 16384, 2**31]))))))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["echo", "store", "store", "release", "abort", "garbage", "header", "pdata"]))
        if kind == "echo":
            command = command_set(0x0030, draw(st.integers(0, 0xFFFF)), sop_class=VERIFICATION, has_dataset=False)
            steps.append(draw(mutated(p_data([(1, 0x03, command)]))))
        elif kind == "store":
            steps.extend(draw(mutated(chunk)) for chunk in draw(store_messages(draw(st.sampled_from([3, 3, 1, 5])))))
        elif kind == "release":
            steps.append(RELEASE_RQ)
        elif kind == "abort":
            steps.append(ABORT)
        elif kind == "garbage":
            steps.append(draw(st.binary(min_size=1, max_size=512)))
        elif kind == "header":
            steps.append(struct.pack(">BBL", draw(st.integers(0, 255)), 0, draw(st.integers(0, 2**32 - 1))))
        else:
            items = draw(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=256)),
                                  max_size=4))
            steps.append(draw(mutated(p_data(items))))
    half_close = draw(st.integers(0, 9)) > 0
    return steps, half_close


@dataclass(frozen=True)
class Played:
    """How the receiver answered one sequence."""

    #: Seconds until the receiver closed the connection (None: still open at the hang limit).
    closed_after: float | None
    #: The first byte the receiver sent (a PDU type), if any.
    first_reply: int | None


def play(port: int, steps: list[bytes], half_close: bool, *, hang_seconds: float) -> Played:
    """Send ``steps`` to 127.0.0.1:port and wait up to ``hang_seconds`` for the receiver to close."""
    started = time.monotonic()
    first: int | None = None
    with socket.create_connection(("127.0.0.1", port), timeout=hang_seconds) as sock:
        try:
            for chunk in steps:
                sock.sendall(chunk)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the receiver already closed: that is an answer too
        deadline = started + hang_seconds
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return Played(closed_after=None, first_reply=first)
            except OSError:
                break
            if not data:
                break
            if first is None:
                first = data[0]
            if data[0] in _FINAL_REPLIES:
                break  # the receiver ended the association; a peer closes now (PS3.8 9.1.5)
    elapsed = time.monotonic() - started
    return Played(closed_after=elapsed if elapsed < hang_seconds else None, first_reply=first)
