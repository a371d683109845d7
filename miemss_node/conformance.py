"""The DICOM conformance statement (PS3.2) of a node, written as Markdown from its configuration.

Everything is read from the objects the node runs with, never copied by hand: the receiver's
presentation contexts from :func:`~miemss_node.receive.scp.build_receiver_ae`, the C-STORE statuses
from the ``STATUS_*`` constants of :mod:`miemss_node.receive.status` (with their docstrings), the
sender's handling of each status from :func:`~miemss_node.send.classify_status`, and the policies
from the :class:`~miemss_node.config.Config`. ``docs/conformance.md`` is this output for the
repository's ``config.toml``; a test regenerates it, so it cannot go stale.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

import pydicom
import pynetdicom
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

import miemss_node
from miemss_node.config import RESULT_TYPES, Config
from miemss_node.queue.retry import RetryPolicy
from miemss_node.receive import status as receive_status
from miemss_node.receive.scp import CONNECTIONS_PER_ASSOCIATION, build_receiver_ae
from miemss_node.result_kinds import RESULT_KINDS
from miemss_node.send import (
    COMPRESSED_RESULT_SYNTAXES,
    PROPOSED_TRANSFER_SYNTAXES,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    STATUS_SUCCESS,
    SendOutcome,
    classify_status,
)

#: The SOP class of each result type (:data:`miemss_node.result_kinds.RESULT_KINDS`); a test checks
#: these against what :func:`~miemss_node.encode.encode_study` builds.
RESULT_SOP_CLASSES: dict[str, UID] = {kind.name: UID(kind.sop_class_uid) for kind in RESULT_KINDS}


@dataclass(frozen=True, kw_only=True)
class StatusConstant:
    """A named status code of a module, with the docstring written under it."""

    name: str
    code: int
    doc: str


def status_constants(module: ModuleType) -> list[StatusConstant]:
    """Return the module-level ``STATUS_* = 0x....`` constants of ``module`` with their docstrings.

    The docstring of a constant is the string statement after it (as Sphinx reads it); it is only in
    the source, so the source is parsed.

    Parameters
    ----------
    module
        A module such as :mod:`miemss_node.receive.status`.

    Returns
    -------
    list of StatusConstant
        In the order of the source.
    """
    tree = ast.parse(inspect.getsource(module))
    found = []
    body = tree.body
    for index, statement in enumerate(body):
        if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
            continue
        target = statement.targets[0]
        if not (isinstance(target, ast.Name) and target.id.startswith("STATUS_")):
            continue
        value = getattr(module, target.id)
        if not isinstance(value, int):
            continue
        following = body[index + 1] if index + 1 < len(body) else None
        doc = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = " ".join(str(following.value.value).split())
        found.append(StatusConstant(name=target.id, code=value, doc=doc))
    return found


def _hex(code: int) -> str:
    return f"0x{code:04X}"


def _meaning(code: int) -> str:
    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("Failure", "unknown"))
    return f"{category}{': ' + meaning if meaning else ''}"


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines + [""]


def _uid_name(uid: str) -> str:
    return UID(uid).name if UID(uid).name != uid else "(unnamed)"


def _decodable(syntax: str) -> bool:
    """Whether pydicom has an available pixel decoder for ``syntax`` (what the pipeline uses)."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except NotImplementedError:
        return False


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _ordered(kinds: Iterable[str]) -> list[str]:
    return [kind for kind in RESULT_TYPES if kind in set(kinds)]


def conformance_statement(config: Config) -> str:
    """Write the conformance statement of a node running with ``config``.

    Parameters
    ----------
    config
        The node's configuration (as loaded by :func:`~miemss_node.config.load_config`).

    Returns
    -------
    str
        Markdown, ending with a newline. Absolute paths and secrets are not included.
    """
    lines: list[str] = []
    lines += _overview(config)
    lines += _implementation(config)
    lines += _receiver(config)
    lines += _sender(config)
    lines += _processing(config)
    lines += _security(config)
    return "\n".join(lines).rstrip("\n") + "\n"


def _overview(config: Config) -> list[str]:
    node = config.node
    source = config.source.name if config.source is not None else "the built-in defaults"
    scu_classes = {RESULT_SOP_CLASSES[kind] for d in config.destinations for kind in d.result_types}
    return [
        f"# DICOM Conformance Statement: MIEMSS node {miemss_node.__version__}",
        "",
        f"Generated by `miemss-node conformance` from `{source}`. It describes the node as configured "
        "there; regenerate it whenever the configuration changes. Sections follow PS3.2 (Conformance).",
        "",
        "## 1. Overview",
        "",
        "The MIEMSS node receives images with C-STORE, waits until a study is complete, analyses its "
        "images (unsupervised anomaly detection; results are AI-generated, UNVERIFIED and not for "
        "diagnosis), and sends the results to its destinations with C-STORE, in the source study.",
        "",
        *_table(
            ["Network service", "SOP classes", "User (SCU)", "Provider (SCP)"],
            [
                ["Verification", "1", "No", "Yes"],
                ["Storage (receiving)", f"{len(_storage_contexts(config))}", "No", "Yes"],
                ["Storage (sending results)", f"{len(scu_classes)}", "Yes" if scu_classes else "No", "No"],
            ],
        ),
        f"One application entity, `{node.ae_title}`, plays both roles: it accepts associations on "
        f"`{node.host}:{node.port}` and opens associations to each destination. No other DIMSE service "
        "(query/retrieve, storage commitment, worklist, MPPS) is supported, and no media are written.",
        "",
    ]


def _implementation(config: Config) -> list[str]:
    ae = build_receiver_ae(config.node)
    return [
        "## 2. Implementation",
        "",
        *_table(
            ["Item", "Value"],
            [
                ["Implementation Class UID", f"`{ae.implementation_class_uid}`"],
                ["Implementation Version Name", f"`{ae.implementation_version_name}`"],
                ["Software", f"miemss-node {miemss_node.__version__}, pynetdicom {pynetdicom.__version__}, "
                 f"pydicom {pydicom.__version__}"],
            ],
        ),
        "The Implementation Class UID and Version Name are pynetdicom's, sent in every A-ASSOCIATE "
        "request and response; the software version is also in Software Versions (0018,1020) of "
        "every result object.",
        "",
    ]


def _storage_contexts(config: Config) -> list[tuple[str, list[str]]]:
    ae = build_receiver_ae(config.node)
    return [
        (str(context.abstract_syntax), [str(s) for s in context.transfer_syntax])
        for context in ae.supported_contexts
        if context.abstract_syntax != Verification
    ]


def _receiver(config: Config) -> list[str]:
    node = config.node
    contexts = _storage_contexts(config)
    syntaxes = sorted({syntax for _, syntax_list in contexts for syntax in syntax_list}, key=_uid_sort_key)
    same_everywhere = all(sorted(s, key=_uid_sort_key) == syntaxes for _, s in contexts)
    calling = ", ".join(f"`{aet}`" for aet in node.allowed_calling_aets) or "any"
    called = f"must be `{node.ae_title}`" if node.require_called_aet else "any (not checked)"
    lines = [
        f"## 3. Receiving: AE `{node.ae_title}` as SCP",
        "",
        "### 3.1 Association acceptance policy",
        "",
        "Accepted associations carry C-ECHO and C-STORE requests only. The node takes the SCP role alone "
        "(no SCP/SCU Role Selection, no extended negotiation, no user identity negotiation).",
        "",
        *_table(
            ["Policy", "Value", "Configured by"],
            [
                ["Listening address", f"`{node.host}:{node.port}`", "`[node] host`, `port`"],
                ["Calling AE titles accepted", calling, "`[node] allowed_calling_aets` (empty = any)"],
                ["Called AE title", called, "`[node] require_called_aet`"],
                ["Simultaneous associations", f"at most {node.max_associations}", "`[node] max_associations`"],
                ["Maximum PDU received", f"{node.max_pdu} bytes (a longer PDU aborts the association)",
                 "`[node] max_pdu`"],
                ["Open connections", f"at most {node.max_associations * CONNECTIONS_PER_ASSOCIATION}",
                 "twice `[node] max_associations`"],
                ["ACSE timeout", _seconds(node.acse_timeout_seconds), "`[node] acse_timeout_seconds`"],
                ["DIMSE timeout", _seconds(node.dimse_timeout_seconds), "`[node] dimse_timeout_seconds`"],
                ["Network timeout (idle association, one socket read or write, one whole PDU)",
                 _seconds(node.network_timeout_seconds), "`[node] network_timeout_seconds`"],
                ["TLS handshake timeout", _seconds(node.acse_timeout_seconds), "`[node] acse_timeout_seconds`"],
            ],
        ),
        "An association from a calling AE title that is not allowed, or to another called AE title when "
        "it is checked, is rejected (A-ASSOCIATE-RJ, rejected-permanent, \"calling/called AE title not "
        "recognised\"); one beyond the association limit is rejected transiently (\"local limit exceeded\").",
        "",
        "### 3.2 SOP classes as SCP",
        "",
        "C-ECHO (Verification) is always answered Success. C-STORE is accepted for every storage SOP "
        "class below; every instance is stored, and only images are analysed (SR, SEG, PDF and other "
        "non-image objects are stored and kept, but not processed).",
        "",
        *_table(
            ["SOP class", "UID"],
            [[_uid_name(Verification), f"`{Verification}`"]]
            + [[_uid_name(uid), f"`{uid}`"] for uid, _ in sorted(contexts, key=lambda c: _uid_sort_key(c[0]))],
        ),
        "### 3.3 Transfer syntaxes accepted",
        "",
        ("Every storage SOP class above accepts each of these transfer syntaxes."
         if same_everywhere else "Transfer syntaxes accepted by at least one storage SOP class."),
        "Instances are stored exactly as received, in the negotiated transfer syntax (never transcoded). "
        "\"Analysed\" says whether the node can decode the pixel data for analysis; an image it cannot "
        "decode is still stored, and the study's report names it with the reason.",
        "",
        *_table(
            ["Transfer syntax", "UID", "Analysed"],
            [[_uid_name(uid), f"`{uid}`", "yes" if _decodable(uid) else "no"] for uid in syntaxes],
        ),
        "### 3.4 C-STORE response statuses",
        "",
        "Success is answered only once the instance is written to disk (fsynced) and recorded in the "
        "database. Statuses returned (PS3.4 Annex B.2.3), with an Error Comment (0000,0902) on failures:",
        "",
        *_table(
            ["Status", "DICOM meaning", "Returned when"],
            [
                [_hex(c.code), _meaning(c.code), c.doc.replace("``", "`")]
                for c in sorted(status_constants(receive_status), key=lambda c: c.code)
            ],
        ),
        "A duplicate (a SOP Instance UID already stored, with the same study, series, patient and "
        "dataset bytes, or the same identity in another transfer syntax) is answered Success and not "
        "stored again; a copy that differs is refused (0xC011) and the stored copy kept. Invalid UIDs "
        "(a trailing newline, a space, a leading zero) are refused as received, never stripped. "
        f"Limits, checked while the dataset streams in: instances larger than {node.max_instance_mb} MB "
        f"are refused{'' if node.max_instance_mb else ' (0: no limit)'} (`[node] max_instance_mb`); below "
        f"{node.min_free_disk_mb} MB of free disk every instance is refused as out of resources "
        "(`[node] min_free_disk_mb`); the rest of a refused dataset is read and dropped, and the answer "
        "comes when the dataset ends. Any other failure is a defect of the node, answered by pynetdicom "
        "with 0xC211.",
        "",
        "A study is complete when no instance of it has arrived for "
        f"{_seconds(config.study.settle_seconds)} (`[study] settle_seconds`); instances arriving after "
        + ("that start a new analysis of the study." if config.study.reprocess_late_instances
           else "that are stored but not analysed again.")
        + " Association release is not used as a signal.",
        "",
    ]
    return lines


def _uid_sort_key(uid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in uid.split("."))


def _sender(config: Config) -> list[str]:
    node, delivery = config.node, config.delivery
    lines = [
        f"## 4. Sending results: AE `{node.ae_title}` as SCU",
        "",
        "### 4.1 Association initiation policy",
        "",
        f"The node associates as `{node.ae_title}` with each destination once a study's results are "
        "encoded, and sends all of that study's results for the destination in one association. "
        f"ACSE, DIMSE and network timeouts: {_seconds(delivery.timeout_seconds)} "
        f"(`[delivery] timeout_seconds`). Maximum PDU received: {AE().maximum_pdu_size} bytes "
        "(pynetdicom's default).",
        "",
    ]
    if config.destinations:
        lines += _table(
            ["Destination", "Called AE title", "Address", "TLS", "Results sent"],
            [
                [f"`{d.name}`", f"`{d.ae_title}`", f"`{d.host}:{d.port}`", "yes" if d.tls else "no",
                 ", ".join(_ordered(d.result_types))]
                for d in config.destinations
            ],
        )
    else:
        lines += ["No destination is configured: results are encoded and kept, but not sent.", ""]
    lines += [
        "### 4.2 SOP classes as SCU",
        "",
        "Every result is a new instance in the source study, each kind in its own new series, and "
        "references the source instances it was made from. Its UIDs are derived from the job, so a "
        "retried job sends the same instances again rather than new copies.",
        "",
        *_table(
            ["Result", "SOP class", "UID", "Sent to (`[[destinations]] result_types`)"],
            [
                [kind, _uid_name(RESULT_SOP_CLASSES[kind]), f"`{RESULT_SOP_CLASSES[kind]}`",
                 ", ".join(f"`{d.name}`" for d in config.destinations if kind in d.result_types) or "none"]
                for kind in RESULT_TYPES
            ],
        ),
        "Each SOP class is proposed in its own presentation context with these transfer syntaxes:",
        "",
        *_table(["Transfer syntax", "UID"], [[_uid_name(s), f"`{s}`"] for s in PROPOSED_TRANSFER_SYNTAXES]),
        "Results are written uncompressed, except a Segmentation whose frames are FRACTIONAL (1-bit "
        "frames that would not fill whole bytes), which is written RLE Lossless. Its SOP class is then also "
        "proposed in a presentation context of that transfer syntax alone; a destination that does not "
        "accept it there, or whose `[[destinations]]` table says `send_compressed = false`, gets the object "
        "decompressed, in one of the syntaxes above (same SOP Instance UID).",
        "",
        *_table(["Compressed transfer syntax", "UID"], [[_uid_name(s), f"`{s}`"] for s in COMPRESSED_RESULT_SYNTAXES]),
        "### 4.3 C-STORE response handling",
        "",
        "Sending stops at the first object not delivered; the whole delivery is then retried or failed.",
        "",
        *_table(["Status received", "DICOM meaning", "Outcome", "What happens"], _send_status_rows(config)),
    ]
    return lines


def _send_status_rows(config: Config) -> list[list[str]]:
    """Classify every storage status pynetdicom knows (and no answer) with ``classify_status``."""
    delivery = config.delivery
    consequences = {
        SendOutcome.DELIVERED: "delivery recorded as delivered",
        SendOutcome.RETRY: (
            f"retried with exponential backoff ({_backoff(delivery.backoff_seconds, delivery.max_backoff_seconds)}); "
            f"at most {delivery.max_attempts} attempts within {delivery.max_age_hours:g} h, then failed "
            "(results kept on disk; `miemss-node resend`)"
        ),
        SendOutcome.REFUSED: "failed at once, not retried; results kept on disk; `miemss-node resend` sends again",
    }
    storage_only = set(STORAGE_SERVICE_CLASS_STATUS) - set(GENERAL_STATUS)
    codes = sorted(storage_only | {STATUS_SUCCESS, STATUS_SOP_CLASS_NOT_SUPPORTED})
    rows = [["none (no association, timeout, abort)", "-", classify_status(None).value,
             consequences[classify_status(None)]]]
    groups: list[list[int]] = []
    for code in codes:
        key = (classify_status(code), _meaning(code))
        if groups and (classify_status(groups[-1][-1]), _meaning(groups[-1][-1])) == key and code == groups[-1][-1] + 1:
            groups[-1].append(code)
        else:
            groups.append([code])
    for group in groups:
        outcome = classify_status(group[0])
        label = _hex(group[0]) if len(group) == 1 else f"{_hex(group[0])}-{_hex(group[-1])}"
        what = consequences[outcome]
        if STORAGE_SERVICE_CLASS_STATUS[group[0]][0] == "Warning":
            what += "; the warning is logged"
        rows.append([label, _meaning(group[0]), outcome.value, what])
    other = next(code for code in range(1, 0x10000) if code not in STORAGE_SERVICE_CLASS_STATUS)
    rows.append(["any other status", "-", classify_status(other).value, consequences[classify_status(other)]])
    return rows


def _backoff(first: float, ceiling: float) -> str:
    """Describe :meth:`~miemss_node.queue.retry.RetryPolicy.delay` for these settings."""
    policy = RetryPolicy(max_attempts=1, backoff_seconds=first, max_backoff_seconds=ceiling, jitter=False)
    return (
        f"the first retry within {_seconds(policy.delay(1))}, each delay doubling up to {_seconds(ceiling)}, "
        "half of each delay random"
    )


def _processing(config: Config) -> list[str]:
    worker, study = config.worker, config.study
    policy = RetryPolicy(max_attempts=worker.max_attempts, backoff_seconds=worker.retry_backoff_seconds)
    retention = (
        f"A study's instances and results are deleted {study.retention_days:g} days after its last "
        "instance arrived, once every result is delivered"
        if study.retention_days
        else "Received instances and results are kept until an operator deletes them"
    )
    return [
        "## 5. Processing failures and retention",
        "",
        "A study whose analysis or encoding fails is retried with exponential backoff "
        f"({_backoff(policy.backoff_seconds, policy.max_backoff_seconds)}), up to {worker.max_attempts} "
        "attempts (`[worker] max_attempts`); then its job is failed with the error (`miemss-node jobs`) "
        "and can be queued again with `miemss-node retry`. An image that cannot be decoded or analysed is "
        "skipped with the reason, and the study's other images are still processed. A worker that stops "
        f"renewing its lease for {_seconds(worker.lease_seconds)} loses the job to another worker.",
        "",
        f"{retention} (`[study] retention_days`).",
        "",
    ]


def _security(config: Config) -> list[str]:
    tls = config.tls
    if not tls.enabled:
        receiving = "not configured: associations are accepted over plain TCP"
    else:
        client = ("required and verified against `ca_certificates`" if tls.require_client_certificate
                  else "not required")
        receiving = f"TLS only (TLS 1.2 or later, PS3.15 B.9); client certificates {client}"
    tls_destinations = [d.name for d in config.destinations if d.tls]
    sending = (
        "TLS (1.2 or later) to " + ", ".join(f"`{name}`" for name in tls_destinations)
        + ", verifying the destination's certificate against `[tls] ca_certificates`"
        if tls_destinations else "not configured: results are sent over plain TCP"
    )
    return [
        "## 6. Security",
        "",
        *_table(["Item", "Value"], [["TLS when receiving (`[tls] enabled`)", receiving],
                                    ["TLS when sending (`[[destinations]] tls`)", sending]]),
        "Access control is by calling AE title (section 3.1) and network address binding. Logs identify "
        "work by UIDs and job ids, never by patient data. Received instances and results are stored "
        "readable by the node's user only.",
        "",
    ]
