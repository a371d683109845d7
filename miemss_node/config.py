"""Load ``config.toml`` into frozen dataclasses, validating everything at once.

Precedence: a CLI flag > a ``MIEMSS_*`` environment variable > the file > the default. The
environment variables are listed in :data:`ENV_OVERRIDES`. Relative paths resolve against the
folder of the config file, never against the package or the working directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from miemss_node.errors import ConfigError
from miemss_node.pipeline.base import PipelineSettings
from miemss_node.result_kinds import (
    DEFAULT_RESULT_TYPES,
    DEFAULT_SERIES_NUMBERS,
    RESULT_KINDS,
    RESULT_TYPES,
    series_number_problems,
)

__all__ = ["DEFAULT_RESULT_TYPES", "RESULT_TYPES", "Config", "ConfigError", "load_config"]

#: Values of ``[logging] format``.
LOG_FORMATS = ("text", "json")

#: ``[pipeline] score_scale`` values (see ``pipeline.anomaly``).
SCORE_SCALES = ("robust", "minmax")

#: Environment variables that override a key of the file: (section, key) -> variable.
ENV_OVERRIDES: dict[tuple[str, str], str] = {
    ("node", "ae_title"): "MIEMSS_AE_TITLE",
    ("node", "host"): "MIEMSS_HOST",
    ("node", "port"): "MIEMSS_PORT",
    ("node", "storage_dir"): "MIEMSS_STORAGE_DIR",
    ("node", "database_url"): "MIEMSS_DATABASE_URL",
    ("study", "settle_seconds"): "MIEMSS_SETTLE_SECONDS",
    ("worker", "count"): "MIEMSS_WORKERS",
    ("logging", "level"): "MIEMSS_LOG_LEVEL",
    ("logging", "format"): "MIEMSS_LOG_FORMAT",
    ("http", "port"): "MIEMSS_HTTP_PORT",
    ("http", "token"): "MIEMSS_HTTP_TOKEN",
}


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    """The receiver: who we are and where received data lives (``[node]``)."""

    ae_title: str = "MIEMSS"
    host: str = "127.0.0.1"
    port: int = 11112
    storage_dir: Path = Path("var/storage")
    #: SQLAlchemy URL; empty in the file means a SQLite file under ``storage_dir``.
    database_url: str = ""
    #: Calling AE titles allowed to associate; empty means any.
    allowed_calling_aets: tuple[str, ...] = ()
    #: Reject associations whose called AE title is not ``ae_title``.
    require_called_aet: bool = False
    #: Largest PDU we receive (the Maximum Length we announce), in bytes, 4096..16777216: a longer
    #: PDU aborts the association before it is read (there is no "unlimited").
    max_pdu: int = 131072
    acse_timeout_seconds: float = 30.0
    dimse_timeout_seconds: float = 60.0
    network_timeout_seconds: float = 60.0
    max_associations: int = 10
    #: Below this much free space (MB) on the storage folder's disk, C-STORE answers 0xA700.
    min_free_disk_mb: int = 500
    #: Instances larger than this (MB) are refused; 0 means no limit.
    max_instance_mb: int = 2048


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """When a study counts as complete (``[study]``)."""

    #: Seconds without a new instance after which a study is settled and a job queued.
    settle_seconds: float = 10.0
    #: Instances arriving after a study's job was queued start a new job for the study.
    reprocess_late_instances: bool = True
    #: Delete a study's instances and results this many days after its last instance, once every
    #: result is delivered; 0 keeps everything.
    retention_days: float = 0.0


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Job processing (``[worker]``)."""

    #: Workers started by ``serve``; 0 runs none (``miemss-node worker`` does the work elsewhere).
    count: int = 1
    #: Run the workers in a child process, so processing never slows receiving.
    processes: bool = True
    #: How often an idle worker looks for a job (one indexed query). A study settled by this node's
    #: settler wakes its workers at once (:mod:`~miemss_node.doorbell`); the poll finds the rest
    #: (retries falling due, reviews, studies settled by another host), adding half of it on average.
    poll_seconds: float = 0.25
    #: A running job whose lease is not renewed for this long is run again by another worker.
    lease_seconds: float = 60.0
    max_attempts: int = 3
    retry_backoff_seconds: float = 30.0
    #: Frames analysed per multi-frame image (each gets its own SEG and SC); 0 means every frame.
    max_frames: int = 0
    #: Processes that analyse one job's images side by side; 1 analyses them one after the other in
    #: the worker, 0 gives each worker its share of the cores (cores / workers on this machine).
    image_processes: int = 0


@dataclass(frozen=True, kw_only=True)
class ResultSettings:
    """The DICOM results we produce (``[results]``)."""

    #: (kind, Series Number of its first version) for every kind of :data:`RESULT_KINDS`; the file
    #: sets them as ``seg_series_number = 9001``, ... (a tuple, so the config pickles to workers).
    series_numbers: tuple[tuple[str, int], ...] = tuple(DEFAULT_SERIES_NUMBERS.items())
    institution_name: str = ""

    def series_number_map(self) -> dict[str, int]:
        """Each kind's first-version Series Number."""
        return dict(self.series_numbers)


@dataclass(frozen=True, kw_only=True)
class DeliverySettings:
    """Retries of deliveries to the destinations (``[delivery]``)."""

    max_attempts: int = 10
    backoff_seconds: float = 10.0
    max_backoff_seconds: float = 600.0
    #: How often the sender looks for due deliveries (one indexed query). A worker of this node wakes
    #: the senders as soon as its results are recorded; the poll finds retries and other hosts' results.
    poll_seconds: float = 0.25
    timeout_seconds: float = 30.0
    #: A delivery still failing this many hours after it was queued gives up (``resend`` retries).
    max_age_hours: float = 72.0


@dataclass(frozen=True, kw_only=True)
class Destination:
    """A PACS (or any Storage SCP) that receives our results (one ``[[destinations]]`` table)."""

    name: str
    ae_title: str
    host: str
    port: int
    #: Send over TLS, verifying the destination with ``[tls] ca_certificates``.
    tls: bool = False
    #: The result types this destination gets (see :data:`RESULT_TYPES`).
    result_types: tuple[str, ...] = DEFAULT_RESULT_TYPES
    #: Hold this destination's results until a reviewer decides (``miemss-node review`` or the
    #: dashboard); it then gets the reviewed version, holding only the accepted findings.
    review: bool = False
    #: What a review destination gets when every finding is rejected: "report" (a short SR that
    #: says so) or "nothing" (see :data:`ALL_REJECTED_CHOICES`).
    all_rejected: str = "report"
    #: Propose the compressed transfer syntax a result is written in (RLE Lossless for a FRACTIONAL
    #: SEG); false sends every result uncompressed, for a PACS that accepts RLE but whose viewers do
    #: not show it.
    send_compressed: bool = True


#: Values of a destination's ``all_rejected``.
ALL_REJECTED_CHOICES = ("report", "nothing")


@dataclass(frozen=True, kw_only=True)
class Reviewer:
    """A person who may accept or reject findings (one ``[[reviewers]]`` table).

    Only a SHA-256 of the reviewer's token is stored (``miemss-node reviewer token NAME`` makes a
    token and prints the table); the token itself is a random secret, so a fast hash is enough.
    """

    #: Short name, as in ``miemss-node review --reviewer NAME`` and the audit log.
    name: str
    #: DICOM Person Name of the Verifying Observer, e.g. "Smith^Jane" (family^given).
    person_name: str
    #: Hex SHA-256 of the reviewer's dashboard token.
    token_sha256: str
    #: Verifying Organization of the reviewed SR; "" uses ``[results] institution_name``.
    organization: str = ""


@dataclass(frozen=True, kw_only=True)
class ReviewSettings:
    """The review loop (``[review]``)."""

    #: JSON-lines audit log of study page views and review decisions; "" = ``<storage_dir>/review-audit.jsonl``.
    audit_log: str = ""


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """The HTTP server of ``/metrics``, ``/healthz`` and the dashboard (``[http]``)."""

    host: str = "127.0.0.1"
    #: Listening port; 0 runs no HTTP server.
    port: int = 0
    #: Secret that the dashboard's retry button asks for; empty disables the button.
    token: str = ""
    #: Show patients' names and IDs on the dashboard (read from the stored instances).
    show_patient_data: bool = False
    #: How many of the most recent studies the dashboard lists.
    recent_studies: int = 50
    #: A connection with no request in progress for this long is closed (s).
    idle_timeout_seconds: float = 10.0
    #: Open connections at most; more wait in the listen queue until some close.
    max_connections: int = 100


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """TLS for receiving and sending (``[tls]``); paths are PEM files."""

    #: Receive over TLS (the listening port then speaks TLS only).
    enabled: bool = False
    #: Our certificate and key: the server certificate when receiving, the client one when sending.
    certificate: str = ""
    private_key: str = ""
    #: CA certificates that verify peers: client certificates (if required) and TLS destinations.
    ca_certificates: str = ""
    #: Refuse TLS clients that present no certificate signed by ``ca_certificates``.
    require_client_certificate: bool = False


#: Devices ``[models] device`` accepts; "auto" uses the GPU when torch sees one.
MODEL_DEVICES = ("auto", "cpu", "cuda")

#: Models ``[models] int8`` may name.
MODEL_ROLES = ("vit", "blip")

#: TorchXRayVision models of ``[models]``: a folder with the library's weights file and a manifest.
XRV_ROLES = ("chest", "anatomy")


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Learned models, loaded offline from local folders (``[models]``).

    A folder is what ``save_pretrained`` writes (``config.json``, weights, processor files). Empty
    means the model is not used; the pipeline then runs on HOG features and says so in the SR.
    """

    #: Folder of a ``ViTModel`` and its image processor: patch embeddings and attention rollout.
    vit: str = ""
    #: Folder of a ``BlipForConditionalGeneration`` and its ``BlipProcessor``: the caption.
    blip: str = ""
    #: "auto" (the GPU when present, else the CPU), "cpu" or "cuda".
    device: str = "auto"
    #: Torch intra-op threads of a worker process; 0 keeps torch's default (one per core).
    threads: int = 0
    #: Models whose Linear layers run as dynamic int8 on the CPU (faster; results differ slightly).
    int8: tuple[str, ...] = ("vit",)
    #: Longest caption, in tokens (greedy decoding unless ``caption_beams`` > 1).
    caption_max_tokens: int = 30
    #: Beam search width of the caption; 1 is greedy.
    caption_beams: int = 1
    #: Folder of a TorchXRayVision DenseNet pathology classifier (``models fetch chest DIR``).
    chest: str = ""
    #: Folder of TorchXRayVision's PSPNet anatomy segmentation (``models fetch anatomy DIR``).
    anatomy: str = ""
    #: A pathology whose probability reaches this is reported (the library puts its operating point at 0.5).
    chest_threshold: float = 0.5
    #: Per-pathology thresholds (``[models.chest_thresholds]``, label = value) overriding ``chest_threshold``.
    chest_thresholds: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    """Log level and format (``[logging]``)."""

    level: str = "INFO"
    #: ``text`` (one line per record: time, level, action, message) or ``json`` (JSON lines).
    format: str = "text"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration of one node."""

    node: NodeSettings = field(default_factory=NodeSettings)
    study: StudySettings = field(default_factory=StudySettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    results: ResultSettings = field(default_factory=ResultSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    destinations: tuple[Destination, ...] = ()
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    reviewers: tuple[Reviewer, ...] = ()
    #: The file this came from, None for the built-in defaults.
    source: Path | None = None

    @property
    def audit_log_path(self) -> Path:
        """Where the review audit log is written."""
        return Path(self.review.audit_log) if self.review.audit_log else self.node.storage_dir / "review-audit.jsonl"

    def destination(self, name: str) -> Destination | None:
        """The configured destination of this name, if any."""
        return next((d for d in self.destinations if d.name == name), None)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL, with the embedded SQLite default filled in."""
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{self.node.storage_dir / 'miemss.db'}"


_SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "study": StudySettings,
    "worker": WorkerSettings,
    "pipeline": PipelineSettings,
    "results": ResultSettings,
    "delivery": DeliverySettings,
    "logging": LoggingSettings,
    "tls": TlsSettings,
    "http": HttpSettings,
    "models": ModelSettings,
    "review": ReviewSettings,
}


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Read and validate a config file.

    Parameters
    ----------
    path
        The TOML file; None uses the built-in defaults (relative paths then resolve against the
        working directory).
    environ
        Environment for the ``MIEMSS_*`` overrides; defaults to ``os.environ``.
    overrides
        Values from CLI flags, keyed by (section, key); they win over everything else.

    Raises
    ------
    ConfigError
        Listing every problem found, not just the first.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    source: Path | None = None
    if path is not None:
        source = Path(path).resolve()
        base_dir = source.parent
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{source}: file not found"]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc

    _apply_environment(raw, os.environ if environ is None else environ, problems)
    for (section, key), value in (overrides or {}).items():
        raw.setdefault(section, {})[key] = value

    unknown = set(raw) - set(_SECTIONS) - {"destinations", "reviewers"}
    problems += [f"unknown section [{name}]" for name in sorted(unknown)]

    modality_tables = _pop_modality_tables(raw.get("pipeline"), problems)
    series_numbers = _pop_series_numbers(raw.get("results"), problems)
    chest_thresholds = _pop_chest_thresholds(raw.get("models"), problems)
    sections = {
        name: _build_section(f"[{name}]", cls, raw.get(name, {}), problems) or cls()
        for name, cls in _SECTIONS.items()
    }
    sections["results"] = replace(sections["results"], series_numbers=series_numbers)
    sections["models"] = replace(sections["models"], chest_thresholds=chest_thresholds)
    sections["pipeline"] = _with_modalities(sections["pipeline"], modality_tables, base_dir, problems)
    destinations = _build_destinations(raw.get("destinations", []), problems)
    reviewers = _build_reviewers(raw.get("reviewers", []), problems)
    node: NodeSettings = sections["node"]
    node = _resolve_paths(node, base_dir)
    sections["node"] = node
    sections["tls"] = _resolve_tls(sections["tls"], base_dir)
    sections["models"] = _resolve_models(sections["models"], base_dir)
    review: ReviewSettings = sections["review"]
    if review.audit_log:
        sections["review"] = replace(review, audit_log=str((base_dir / review.audit_log).resolve()))

    _validate(sections, destinations, problems)
    if any(d.review for d in destinations) and not reviewers:
        problems.append(
            "[[destinations]] with review = true need at least one [[reviewers]] table "
            "(`miemss-node reviewer token NAME` prints one); otherwise nothing could release their results"
        )
    if problems:
        raise ConfigError(problems)
    return Config(**sections, destinations=destinations, reviewers=reviewers, source=source)


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> None:
    defaults = {name: {f.name: f for f in fields(cls)} for name, cls in _SECTIONS.items()}
    for (section, key), variable in ENV_OVERRIDES.items():
        if variable not in environ:
            continue
        text = environ[variable]
        kind = defaults[section][key].type
        try:
            value: Any = _parse_env_value(text, str(kind))
        except ValueError:
            problems.append(f"{variable}={text!r}: expected {kind}")
            continue
        raw.setdefault(section, {})[key] = value


def _parse_env_value(text: str, kind: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text


def _build_section(label: str, cls: type, table: Any, problems: list[str]) -> Any:
    """Build one section's dataclass from its table, recording type problems."""
    if not isinstance(table, dict):
        problems.append(f"{label} must be a table")
        return None
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            problems.append(f"{label} unknown key {key!r}")
            continue
        coerced = _coerce(value, str(known[key].type))
        if coerced is _INVALID:
            problems.append(f"{label} {key} = {value!r}: expected {known[key].type}")
            continue
        values[key] = coerced
    try:
        return cls(**values)
    except TypeError:
        return None  # a required field was refused above; the problem is already listed


_INVALID = object()


def _coerce(value: Any, kind: str) -> Any:
    """Check a TOML value against a field's annotation (as a string); ints pass for floats."""
    if kind == "bool":
        return value if isinstance(value, bool) else _INVALID
    if kind == "int":
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _INVALID
    if kind == "str":
        return value if isinstance(value, str) else _INVALID
    if kind == "Path":
        return Path(value) if isinstance(value, str) and value else _INVALID
    if kind.startswith("tuple[str"):
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        return tuple(value) if ok else _INVALID
    raise TypeError(f"no coercion for annotation {kind}")


def _build_tables(
    label: str, cls: type, tables: Any, required: tuple[str, ...], problems: list[str], defaults: Any = None
) -> list[Any]:
    """Build every table of an array of tables (``[[label]]``) as ``cls``; ``defaults(table)`` adds
    default values taken from the table itself. A table with a problem is left out (and listed)."""
    if not isinstance(tables, list):
        problems.append(f"[[{label}]] must be an array of tables")
        return []
    result = []
    for index, table in enumerate(tables, start=1):
        where = f"[[{label}]] #{index}"
        if not isinstance(table, dict):
            problems.append(f"{where} must be a table")
            continue
        missing = [key for key in required if key not in table]
        problems += [f"{where} missing {key!r}" for key in missing]
        if missing:
            continue
        before = len(problems)
        built = _build_section(where, cls, {**(defaults(table) if defaults else {}), **table}, problems)
        if len(problems) == before:
            result.append((where, built))
    names = [item.name for _where, item in result]
    problems += [f"[[{label}]] name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    return result


def _build_destinations(tables: Any, problems: list[str]) -> tuple[Destination, ...]:
    """Build every ``[[destinations]]`` table; ``name`` defaults to the AE title."""
    built = _build_tables(
        "destinations", Destination, tables, ("ae_title", "host", "port"), problems, lambda t: {"name": t["ae_title"]}
    )
    return tuple(destination for _where, destination in built)


def _build_reviewers(tables: Any, problems: list[str]) -> tuple[Reviewer, ...]:
    """Build every ``[[reviewers]]`` table, checking names, person names and token hashes."""
    result = []
    for where, reviewer in _build_tables("reviewers", Reviewer, tables, ("name", "person_name", "token_sha256"), problems):
        found = _reviewer_problems(reviewer)
        problems += [f"{where} {problem}" for problem in found]
        if not found:
            result.append(reviewer)
    hashes = [r.token_sha256.lower() for r in result]
    if len(set(hashes)) != len(hashes):
        problems.append("[[reviewers]] two reviewers share a token: give each their own")
    return tuple(result)


def _reviewer_problems(reviewer: Reviewer) -> list[str]:
    problems = []
    if not reviewer.name.strip() or len(reviewer.name) > 64 or not reviewer.name.isprintable():
        problems.append(f"name {reviewer.name!r} must be 1-64 printable characters")
    if "^" not in reviewer.person_name or len(reviewer.person_name) > 64 or "\\" in reviewer.person_name:
        problems.append(
            f"person_name {reviewer.person_name!r} must be a DICOM Person Name such as \"Smith^Jane\" (family^given)"
        )
    digest = reviewer.token_sha256
    if len(digest) != 64 or any(char not in "0123456789abcdefABCDEF" for char in digest):
        problems.append("token_sha256 must be 64 hex digits (`miemss-node reviewer token NAME` prints one)")
    if len(reviewer.organization) > 64:
        problems.append("organization must be at most 64 characters (VR LO)")
    return problems


def _resolve_tls(tls: TlsSettings, base_dir: Path) -> TlsSettings:
    resolved: dict[str, Any] = {
        name: str(base_dir / value) if value and not Path(value).is_absolute() else value
        for name in ("certificate", "private_key", "ca_certificates")
        if (value := getattr(tls, name)) is not None
    }
    return replace(tls, **resolved)


def _resolve_models(models: ModelSettings, base_dir: Path) -> ModelSettings:
    resolved: dict[str, Any] = {
        name: str((base_dir / value).resolve())
        for name in (*MODEL_ROLES, *XRV_ROLES)
        if (value := getattr(models, name))
    }
    return replace(models, **resolved)


def _resolve_paths(node: NodeSettings, base_dir: Path) -> NodeSettings:
    storage = node.storage_dir if node.storage_dir.is_absolute() else base_dir / node.storage_dir
    url = node.database_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        url = prefix + str(base_dir / url[len(prefix) :])
    return NodeSettings(**{**_as_dict(node), "storage_dir": storage.resolve(), "database_url": url})


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _validate(sections: dict[str, Any], destinations: tuple[Destination, ...], problems: list[str]) -> None:
    node: NodeSettings = sections["node"]
    _check_ae("[node] ae_title", node.ae_title, problems)
    for aet in node.allowed_calling_aets:
        _check_ae("[node] allowed_calling_aets", aet, problems)
    _check_port("[node] port", node.port, problems, allow_zero=True)
    for name in ("acse_timeout_seconds", "dimse_timeout_seconds", "network_timeout_seconds"):
        _check_positive(f"[node] {name}", getattr(node, name), problems)
    _check_positive("[node] max_associations", node.max_associations, problems)
    if node.min_free_disk_mb < 0 or node.max_instance_mb < 0:
        problems.append("[node] min_free_disk_mb and max_instance_mb must be >= 0")
    if not MIN_PDU <= node.max_pdu <= MAX_PDU:
        problems.append(f"[node] max_pdu {node.max_pdu} must be {MIN_PDU}..{MAX_PDU} bytes (a finite limit keeps memory flat)")
    url = node.database_url
    if url and "://" not in url:
        problems.append(f"[node] database_url {url!r} is not an SQLAlchemy URL (e.g. sqlite:///miemss.db)")

    study: StudySettings = sections["study"]
    if study.settle_seconds < 0:
        problems.append("[study] settle_seconds must be >= 0")
    if study.retention_days < 0:
        problems.append("[study] retention_days must be >= 0 (0 = keep everything)")

    worker: WorkerSettings = sections["worker"]
    if worker.count < 0:
        problems.append("[worker] count must be >= 0")
    for name in ("poll_seconds", "lease_seconds", "max_attempts"):
        _check_positive(f"[worker] {name}", getattr(worker, name), problems)
    if worker.retry_backoff_seconds < 0:
        problems.append("[worker] retry_backoff_seconds must be >= 0")
    if worker.max_frames < 0:
        problems.append("[worker] max_frames must be >= 0 (0 = every frame)")
    if worker.image_processes < 0:
        problems.append("[worker] image_processes must be >= 0 (0 = the worker's share of the cores)")

    _validate_pipeline(sections["pipeline"], problems)

    results: ResultSettings = sections["results"]
    problems += [f"[results] {problem}" for problem in series_number_problems(results.series_number_map())]
    if len(results.institution_name) > 64:
        problems.append("[results] institution_name must be at most 64 characters (VR LO)")

    delivery: DeliverySettings = sections["delivery"]
    for name in ("max_attempts", "poll_seconds", "timeout_seconds", "max_backoff_seconds", "max_age_hours"):
        _check_positive(f"[delivery] {name}", getattr(delivery, name), problems)
    if delivery.backoff_seconds < 0:
        problems.append("[delivery] backoff_seconds must be >= 0")

    for index, destination in enumerate(destinations, start=1):
        _check_ae(f"[[destinations]] #{index} ae_title", destination.ae_title, problems)
        _check_port(f"[[destinations]] #{index} port", destination.port, problems)
        if not destination.host:
            problems.append(f"[[destinations]] #{index} host must not be empty")
        unknown = [kind for kind in destination.result_types if kind not in RESULT_TYPES]
        if unknown:
            problems.append(
                f"[[destinations]] #{index} result_types: unknown {', '.join(repr(u) for u in unknown)} "
                f"(known: {', '.join(RESULT_TYPES)})"
            )
        if not destination.result_types:
            known = ", ".join(RESULT_TYPES)
            problems.append(f"[[destinations]] #{index} result_types must name at least one of {known}")
        if destination.all_rejected not in ALL_REJECTED_CHOICES:
            problems.append(
                f"[[destinations]] #{index} all_rejected {destination.all_rejected!r} is not one of "
                f"{', '.join(ALL_REJECTED_CHOICES)}"
            )

    _validate_tls(sections["tls"], destinations, problems)
    _validate_models(sections["models"], problems)
    _validate_http(sections["http"], problems)

    level = sections["logging"].level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        problems.append(f"[logging] level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if sections["logging"].format not in LOG_FORMATS:
        problems.append(f"[logging] format {sections['logging'].format!r} is not one of {', '.join(LOG_FORMATS)}")


def _validate_models(models: ModelSettings, problems: list[str]) -> None:
    """Check the [models] keys; a model folder must exist and hold a ``config.json``."""
    if models.device not in MODEL_DEVICES:
        problems.append(f"[models] device {models.device!r} is not one of {', '.join(MODEL_DEVICES)}")
    if models.threads < 0:
        problems.append("[models] threads must be >= 0 (0 = torch's default)")
    for role in models.int8:
        if role not in MODEL_ROLES:
            problems.append(f"[models] int8 names {role!r}; expected some of {', '.join(MODEL_ROLES)}")
    _check_positive("[models] caption_max_tokens", models.caption_max_tokens, problems)
    _check_positive("[models] caption_beams", models.caption_beams, problems)
    for role in MODEL_ROLES:
        folder = getattr(models, role)
        if not folder:
            continue
        fix = (
            f"put a model saved with save_pretrained there (`miemss-node models fetch {role} DIR` on a "
            f"machine with a network, then copy DIR), or set {role} = \"\" to run without it"
        )
        if not Path(folder).is_dir():
            problems.append(f"[models] {role} folder {folder} does not exist: {fix}")
        elif not (Path(folder) / "config.json").is_file():
            problems.append(f"[models] {role} folder {folder} has no config.json: {fix}")
    for role in XRV_ROLES:
        folder = getattr(models, role)
        if folder and not Path(folder).is_dir():
            problems.append(
                f"[models] {role} folder {folder} does not exist: run `miemss-node models fetch {role} DIR` on a "
                f"machine with a network and copy DIR here, or set {role} = \"\" to run without it"
            )
    for label, value in (("chest_threshold", models.chest_threshold), *models.chest_thresholds):
        if not 0.0 < value < 1.0:
            where = "chest_threshold" if label == "chest_threshold" else f"chest_thresholds.{label}"
            problems.append(f"[models] {where} = {value}: a threshold lies strictly between 0 and 1")


def _validate_tls(tls: TlsSettings, destinations: tuple[Destination, ...], problems: list[str]) -> None:
    if tls.enabled and not (tls.certificate and tls.private_key):
        problems.append("[tls] enabled = true needs certificate and private_key (PEM files)")
    if tls.require_client_certificate and not tls.ca_certificates:
        problems.append("[tls] require_client_certificate = true needs ca_certificates")
    if any(d.tls for d in destinations) and not tls.ca_certificates:
        problems.append("[[destinations]] with tls = true need [tls] ca_certificates to verify the PACS")
    for name in ("certificate", "private_key", "ca_certificates"):
        value = getattr(tls, name)
        if value and not Path(value).is_file():
            problems.append(f"[tls] {name} {value!r} is not a file")


#: Range of ``[node] max_pdu`` (PS3.8 D.1: 0 would announce "no limit", which we refuse).
MIN_PDU, MAX_PDU = 4096, 1 << 24

#: Shortest ``[http] token``: the retry button's only protection.
MIN_TOKEN_LENGTH = 16


def _validate_http(http: HttpSettings, problems: list[str]) -> None:
    _check_port("[http] port", http.port, problems, allow_zero=True)
    if not http.host:
        problems.append("[http] host must not be empty (127.0.0.1 keeps the dashboard on this machine)")
    if http.token and len(http.token) < MIN_TOKEN_LENGTH:
        problems.append(f"[http] token must be at least {MIN_TOKEN_LENGTH} characters (empty disables retries)")
    _check_positive("[http] recent_studies", http.recent_studies, problems)
    if http.idle_timeout_seconds < 1:
        problems.append("[http] idle_timeout_seconds must be >= 1")
    _check_positive("[http] max_connections", http.max_connections, problems)


def _validate_pipeline(pipeline: PipelineSettings, problems: list[str], label: str = "[pipeline]") -> None:
    own: list[str] = []
    _validate_pipeline_values(pipeline, own, label)
    problems += own
    for name, override in pipeline.modality_overrides:
        found: list[str] = []
        override_label = f"[pipeline.modality.{name}]"
        _validate_pipeline_values(override, found, override_label)
        # A value inherited from [pipeline] is reported once, there.
        problems += [p for p in found if p.replace(override_label, label, 1) not in own]


def _validate_pipeline_values(pipeline: PipelineSettings, problems: list[str], label: str) -> None:
    if pipeline.denoise_method != PipelineSettings.denoise_method:
        methods = denoise_methods()
        if pipeline.denoise_method not in methods:
            problems.append(f"{label} denoise_method {pipeline.denoise_method!r} is not one of {methods}")
    if not 0.0 < pipeline.threshold < 1.0:
        problems.append(f"{label} threshold must be between 0 and 1")
    for name in ("analysis_max_side", "patch_size", "n_estimators"):
        _check_positive(f"{label} {name}", getattr(pipeline, name), problems)
    if pipeline.patch_size * 4 > pipeline.analysis_max_side:
        problems.append(f"{label} patch_size must be at most a quarter of analysis_max_side")
    if pipeline.min_region_area_mm2 < 0:
        problems.append(f"{label} min_region_area_mm2 must be >= 0")
    if pipeline.patch_size_mm < 0:
        problems.append(f"{label} patch_size_mm must be >= 0 (0 = use patch_size in pixels)")
    if pipeline.score_scale not in SCORE_SCALES:
        problems.append(f"{label} score_scale {pipeline.score_scale!r} is not one of {SCORE_SCALES}")
    if pipeline.reference_model and not Path(pipeline.reference_model).is_file():
        problems.append(
            f"{label} reference_model {pipeline.reference_model} does not exist: make one with "
            "`miemss-node reference fit DIR --output FILE`, or set reference_model = \"\""
        )


def denoise_methods() -> tuple[str, ...]:
    """The ``denoise_method`` values: the enhance stage's methods (``pipeline.enhance.METHODS``).

    Imported only when a config names a method other than the default, because the enhance stage
    imports scikit-image (0.7 s), which ``healthcheck`` and ``check-config`` should not wait for.
    """
    from miemss_node.pipeline.enhance import METHODS

    return tuple(METHODS)


def _pop_series_numbers(results_table: Any, problems: list[str]) -> tuple[tuple[str, int], ...]:
    """Take the ``<kind>_series_number`` keys out of ``[results]``: one per kind of :data:`RESULT_KINDS`."""
    numbers = dict(DEFAULT_SERIES_NUMBERS)
    if not isinstance(results_table, dict):
        return tuple(numbers.items())
    if "series_numbers" in results_table:
        del results_table["series_numbers"]
        problems.append("[results] unknown key 'series_numbers' (use seg_series_number = 9001, ...)")
    for kind in RESULT_KINDS:
        if kind.series_number_key not in results_table:
            continue
        value = results_table.pop(kind.series_number_key)
        if _coerce(value, "int") is _INVALID:
            problems.append(f"[results] {kind.series_number_key} = {value!r}: expected int")
            continue
        numbers[kind.name] = value
    return tuple(numbers.items())


def _pop_chest_thresholds(models_table: Any, problems: list[str]) -> tuple[tuple[str, float], ...]:
    """Take ``[models.chest_thresholds]`` (pathology label = threshold) out of ``[models]``."""
    if not isinstance(models_table, dict) or "chest_thresholds" not in models_table:
        return ()
    table = models_table.pop("chest_thresholds")
    if not isinstance(table, dict):
        problems.append("[models] chest_thresholds must be a table: [models.chest_thresholds] with Label = 0.6")
        return ()
    thresholds = []
    for label, value in table.items():
        if _coerce(value, "float") is _INVALID:
            problems.append(f"[models.chest_thresholds] {label} = {value!r}: expected a number")
            continue
        thresholds.append((str(label), float(value)))
    return tuple(thresholds)


def _pop_modality_tables(pipeline_table: Any, problems: list[str]) -> dict[str, Any]:
    """Take the ``[pipeline.modality.X]`` tables out of ``[pipeline]`` before it is built."""
    if not isinstance(pipeline_table, dict):
        return {}
    if "modality_overrides" in pipeline_table:
        del pipeline_table["modality_overrides"]
        problems.append("[pipeline] unknown key 'modality_overrides' (use [pipeline.modality.CR] tables)")
    tables = pipeline_table.pop("modality", {})
    if not isinstance(tables, dict):
        problems.append("[pipeline] modality must be tables such as [pipeline.modality.CR]")
        return {}
    return tables


def _with_modalities(
    base: PipelineSettings, tables: dict[str, Any], base_dir: Path, problems: list[str]
) -> PipelineSettings:
    """Resolve the reference model path and add the per-Modality overrides of ``[pipeline]``.

    A ``[pipeline.modality.CR]`` table holds only the keys that differ; the rest comes from
    ``[pipeline]``. Modalities are Modality (0008,0060) values (CS: upper case, at most 16).
    """
    base = _resolve_reference(base, base_dir)
    overrides = []
    for name, table in tables.items():
        label = f"[pipeline.modality.{name}]"
        if not (isinstance(name, str) and 0 < len(name) <= 16 and name == name.upper() and name.isascii()):
            problems.append(f"{label} is not a Modality value (upper case, at most 16 characters)")
            continue
        if not isinstance(table, dict):
            problems.append(f"{label} must be a table")
            continue
        for key in ("modality", "modality_overrides"):
            if key in table:
                problems.append(f"{label} unknown key {key!r}")
                table = {k: v for k, v in table.items() if k != key}
        built = _build_section(label, PipelineSettings, table, problems) or PipelineSettings()
        known = {f.name for f in fields(PipelineSettings)}
        chosen = {key: getattr(built, key) for key in table if key in known}
        overrides.append((name, _resolve_reference(replace(base, **chosen), base_dir)))
    return replace(base, modality_overrides=tuple(overrides))


def _resolve_reference(pipeline: PipelineSettings, base_dir: Path) -> PipelineSettings:
    """Reference files named relative to the config file's folder become absolute paths."""
    def absolute(path: str) -> str:
        return str((base_dir / path).resolve()) if path else path

    return replace(
        pipeline,
        reference_model=absolute(pipeline.reference_model),
        chest_reference=absolute(pipeline.chest_reference),
    )


def _check_ae(where: str, value: str, problems: list[str]) -> None:
    """An AE title (VR AE, PS3.5 6.2): 1-16 ASCII characters, no backslash or control character."""
    reason = ""
    if not value.strip():
        reason = "must not be empty"
    elif len(value) > 16:
        reason = "must not exceed 16 characters"
    elif not value.isascii() or "\\" in value or any(not char.isprintable() for char in value):
        reason = "must be ASCII without backslashes or control characters"
    if reason:
        problems.append(f"{where} {value!r} is not a valid AE title: {reason}")


def _check_port(where: str, value: int, problems: list[str], *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        problems.append(f"{where} {value} is not a TCP port ({low}..65535)")


def _check_positive(where: str, value: float, problems: list[str]) -> None:
    if value <= 0:
        problems.append(f"{where} must be > 0")
