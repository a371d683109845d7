"""The ``miemss-node`` command line.

Exit codes: 0 success, 1 a failure while running, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from miemss_node import __version__
from miemss_node.config import RESULT_TYPES, Config, load_config
from miemss_node.errors import ConfigError, MiemssError
from miemss_node.logconfig import configure_logging

if TYPE_CHECKING:
    from miemss_node.node import Node

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

CONFIG_ENV = "MIEMSS_CONFIG"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging("INFO", verbose=args.verbose)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"miemss-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MiemssError as exc:
        _print_error(exc, verbose=args.verbose)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: the cause, with the traceback under -v
        _print_error(exc, verbose=args.verbose)
        if not args.verbose:
            print("miemss-node: this is a bug; run with -v for the traceback and report it", file=sys.stderr)
        return EXIT_FAILURE


def _print_error(exc: BaseException, *, verbose: bool) -> None:
    if verbose:
        logger.exception("command failed", exc_info=exc)
    cause: BaseException | None = exc
    prefix = "miemss-node: "
    while cause is not None:
        text = str(cause) if isinstance(cause, MiemssError) else f"{type(cause).__name__}: {cause}"
        print(f"{prefix}{text}", file=sys.stderr)
        cause, prefix = cause.__cause__, "  caused by: "


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miemss-node", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"miemss-node {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, ours and pynetdicom's")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        return sub

    def with_config(sub: argparse.ArgumentParser, *, required: bool = False) -> None:
        sub.add_argument(
            "--config",
            type=Path,
            default=None,
            required=required,
            help=f"config.toml to use (env {CONFIG_ENV}; default: built-in defaults)",
        )

    serve = command("serve", _serve, "run the node: receiver, settler, workers and sender")
    with_config(serve)
    serve.add_argument("--port", type=int, help="listening port (env MIEMSS_PORT)")
    serve.add_argument("-aet", "--ae-title", dest="ae_title", help="our AE title (env MIEMSS_AE_TITLE)")

    worker = command("worker", _worker, "run workers only (receiver and sender run elsewhere)")
    with_config(worker)
    worker.add_argument("--concurrency", type=int, default=1, help="worker threads (default 1)")

    process = command("process", _process, "run the pipeline on files offline (no network, no database)")
    with_config(process)
    process.add_argument("--input", type=Path, required=True, help="PNG/JPEG/DICOM file or a folder of them")
    process.add_argument("--output", type=Path, required=True, help="folder for the outputs")
    process.add_argument(
        "--result-types",
        dest="result_types",
        type=_result_types,
        default=None,
        help="DICOM results to write for a DICOM input, comma-separated, of "
        f"{','.join(RESULT_TYPES)} (env MIEMSS_RESULT_TYPES; default: all of them)",
    )

    check = command("check-config", _check_config, "validate a config file and print every problem")
    with_config(check, required=True)

    conformance = command("conformance", _conformance, "write the DICOM conformance statement (Markdown)")
    with_config(conformance, required=True)
    conformance.add_argument("--output", type=Path, help="file to write (default: standard output)")

    jobs = command("jobs", _jobs, "list recent jobs with state, attempts and last error")
    with_config(jobs)
    jobs.add_argument("--limit", type=int, default=50)

    retry = command("retry", _retry, "queue a failed job again")
    with_config(retry)
    retry.add_argument("job_id", type=int)

    resend = command("resend", _resend, "send a study's latest results again")
    with_config(resend)
    resend.add_argument("study_uid")
    resend.add_argument("--destination", help="name of one destination (default: all of the job's)")

    review = command(
        "review", _review, "accept or reject the findings of a study held for review; the reviewed version is then sent"
    )
    with_config(review, required=True)
    review.add_argument("study_uid", help="Study Instance UID of the study awaiting review")
    verdict = review.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--accept", action="store_true", help="accept the findings (all, or those of --finding)")
    verdict.add_argument("--reject", action="store_true", help="reject the findings (all, or those of --finding)")
    review.add_argument(
        "--finding",
        type=int,
        nargs="+",
        action="extend",
        default=[],
        metavar="N",
        help="finding numbers (as on the study page) the decision is for; the others get the opposite one",
    )
    review.add_argument("--comment", help="a note for the reviewed report (goes into the SR, not into logs)")
    review.add_argument("--reviewer", required=True, help="your name as in a [[reviewers]] table of the config")

    reviewer = command("reviewer", _reviewer_token, "reviewers of held results")
    reviewer_commands = reviewer.add_subparsers(title="reviewer commands", required=True, metavar="REVIEWER_COMMAND")
    reviewer_token = reviewer_commands.add_parser(
        "token", help="make a reviewer's token; prints it once and the [[reviewers]] table (with its hash) for the config"
    )
    reviewer_token.set_defaults(func=_reviewer_token)
    reviewer_token.add_argument("name", help="the reviewer's short name (e.g. jsmith)")
    reviewer_token.add_argument("--person-name", required=True, help='DICOM Person Name, e.g. "Smith^Jane"')

    health = command("healthcheck", _healthcheck, "C-ECHO the node's receiver; exit 0 when it answers")
    with_config(health)

    models = command("models", _models_check, "check or fetch the models of [models] (ViT, BLIP, chest, anatomy)")
    model_commands = models.add_subparsers(title="models commands", required=True, metavar="MODELS_COMMAND")
    models_check = model_commands.add_parser(
        "check", help="load each configured model offline; print what it is and a forward pass's time"
    )
    models_check.set_defaults(func=_models_check)
    with_config(models_check)
    models_fetch = model_commands.add_parser(
        "fetch", help="download a model into a folder (needs a network): Hugging Face Hub or TorchXRayVision"
    )
    models_fetch.set_defaults(func=_models_fetch)
    models_fetch.add_argument(
        "name", help="vit, blip, a Hub repository id such as owner/name, or chest or anatomy (TorchXRayVision)"
    )
    models_fetch.add_argument("folder", type=Path, help="where to put it; then set [models] NAME to it")
    models_fetch.add_argument("--revision", help="Hub models: branch, tag or commit (default: the default branch)")
    models_fetch.add_argument(
        "--weights", help="chest: TorchXRayVision DenseNet weights (default densenet121-res224-all)"
    )

    from miemss_node.evaluate.command import (
        add_chest_reference_arguments,
        add_evaluate_arguments,
        add_reference_arguments,
    )

    evaluate = command(
        "evaluate", _evaluate, "measure the pipeline: synthetic lesions in real films, image + mask pairs"
    )
    with_config(evaluate)
    add_evaluate_arguments(evaluate)
    reference = command("reference", _reference_fit, "reference models of normal films")
    reference_commands = reference.add_subparsers(title="reference commands", required=True, metavar="REF_COMMAND")
    reference_fit = reference_commands.add_parser("fit", help="fit a reference model on a folder of normal films")
    reference_fit.set_defaults(func=_reference_fit)
    with_config(reference_fit)
    add_reference_arguments(reference_fit)
    reference_chest = reference_commands.add_parser(
        "chest", help="build the chest analysis's normal reference from normal frontal chest films"
    )
    reference_chest.set_defaults(func=_reference_chest)
    with_config(reference_chest)
    add_chest_reference_arguments(reference_chest)
    return parser


def _load(args: argparse.Namespace, **overrides: object) -> Config:
    import os

    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    flags = {("node", key): value for key, value in overrides.items() if value is not None}
    config = load_config(path, overrides=flags)
    configure_logging(config.logging.level, verbose=args.verbose, log_format=config.logging.format)
    return config


def _serve(args: argparse.Namespace) -> int:
    from miemss_node.node import Node
    from miemss_node.preflight import check_ready

    config = _load(args, port=args.port, ae_title=args.ae_title)
    check_ready(config, sends=True)
    return _run_until_signal(Node(config))


def _worker(args: argparse.Namespace) -> int:
    from miemss_node.node import Node
    from miemss_node.preflight import check_ready

    config = _load(args)
    check_ready(config, sends=False)
    return _run_until_signal(Node(config, with_receiver=False, worker_count=args.concurrency))


def _run_until_signal(node: Node) -> int:
    received: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Only note the signal: taking locks here (Event.set, logging) can deadlock if the signal
        # lands while the main thread holds the same lock; the loop below acts on it.
        received.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` dumps every thread's stack
    try:
        node.start()
    except BaseException:
        node.stop()  # whatever had started (a receiver, threads) stops before the error is reported
        raise
    while not received and not node.wait(0.5):
        pass
    if received:
        logger.info("signal %d: stopping", received[0], extra={"action": "node.stopping"})
    node.stop()
    return EXIT_OK


def _result_types(text: str) -> frozenset[str]:
    """Parse ``--result-types``: comma-separated names of :data:`RESULT_TYPES`."""
    kinds = frozenset(part.strip().upper() for part in text.split(",") if part.strip())
    unknown = sorted(kinds - set(RESULT_TYPES))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown result type(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(RESULT_TYPES)}"
        )
    return kinds


def _process(args: argparse.Namespace) -> int:
    """Exit 0 when some input was processed; 2 when none was (each refused file named on one line)."""
    gc.disable()  # the imports make only what lives as long as the process: collecting during them is wasted
    try:
        from miemss_node.process import process_path
    finally:
        gc.enable()
    # At exit the interpreter would otherwise run full collections over every object imported and made
    # (pydicom's, highdicom's and SciPy's tables): half a second after the files are written and closed.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    config = _load(args)
    kinds = args.result_types
    if kinds is None and os.environ.get("MIEMSS_RESULT_TYPES"):
        try:
            kinds = _result_types(os.environ["MIEMSS_RESULT_TYPES"])
        except argparse.ArgumentTypeError as exc:
            print(f"miemss-node: MIEMSS_RESULT_TYPES: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if not args.input.exists():
        print(f"miemss-node: {args.input}: input not found", file=sys.stderr)
        return EXIT_USAGE
    from miemss_node.pipeline.models import load_models

    done = process_path(args.input, args.output, config.pipeline, load_models(config.models), kinds=kinds)
    for item in done:
        if item.error:
            print(f"miemss-node: {item.source}: {item.error}", file=sys.stderr)
        else:
            print(f"{item.source}: {item.regions} region(s) -> {item.output_dir}")
    if not done:
        print(f"miemss-node: {args.input}: no file to process", file=sys.stderr)
    return EXIT_USAGE if all(item.error for item in done) else EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from miemss_node.evaluate.command import run_evaluate
    from miemss_node.pipeline.models import NO_MODELS, load_models

    config = _load(args)
    if args.feedback:
        from miemss_node.evaluate.command import run_feedback

        return run_feedback(args, config)
    # Real films run through the node's models, as the node runs them (chest classifier: AUC per pathology).
    real = args.zones is not None or args.labels is not None
    return run_evaluate(args, config.pipeline, load_models(config.models) if real else NO_MODELS)


def _reference_chest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from miemss_node.evaluate.command import run_chest_reference
    from miemss_node.pipeline.models import load_models

    config = _load(args)
    # Measured on the lungs the node will outline: the anatomy model's when one is configured.
    only_anatomy = replace(config.models, vit="", blip="", chest="")
    return run_chest_reference(args, config.pipeline, load_models(only_anatomy).anatomy)


def _reference_fit(args: argparse.Namespace) -> int:
    from miemss_node.evaluate.command import run_reference_fit

    return run_reference_fit(args, _load(args))


def _models_check(args: argparse.Namespace) -> int:
    from miemss_node.pipeline.models import check_models

    config = _load(args)
    checks = check_models(config.models)
    if not checks:
        print("no model configured in [models]: the pipeline runs on HOG features and says so in the SR")
    for check in checks:
        run = check.run
        print(f"{run.role}: {run.name} ({run.revision})")
        print(f"  {run.parameters}; {check.parameters:,} parameters")
        print(f"  loaded in {check.load_seconds:.2f} s; forward pass {check.forward_seconds:.3f} s: {check.output}")
    return EXIT_OK


def _models_fetch(args: argparse.Namespace) -> int:
    from miemss_node.pipeline.models import fetch_model

    if args.name in ("chest", "anatomy"):
        from miemss_node.pipeline.xrv import fetch_xrv

        manifest = fetch_xrv(args.name, args.folder, weights=args.weights)
        print(f"fetched {manifest.name} ({manifest.revision}) into {args.folder}")
        print(f"copy the folder to the node and set [models] {args.name} = \"{args.folder}\" in its config.toml")
        return EXIT_OK
    repo_id, commit = fetch_model(args.name, args.folder, revision=args.revision)
    print(f"fetched {repo_id} at {commit or 'unknown commit'} into {args.folder}")
    role = args.name if args.name in ("vit", "blip") else "vit|blip"
    print(f"copy the folder to the node and set [models] {role} = \"{args.folder}\" in its config.toml")
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    from miemss_node.preflight import check_ready

    config = _load(args)
    check_ready(config, sends=True)
    print(f"{config.source}: ok")
    print(f"  receiver {config.node.ae_title} on {config.node.host}:{config.node.port}")
    print(f"  storage {config.node.storage_dir}")
    print(f"  database {config.database_url.split('@')[-1]}")
    for destination in config.destinations:
        print(f"  destination {destination.name}: {destination.ae_title}@{destination.host}:{destination.port}")
    models = config.models
    print(
        f"  models vit={models.vit or 'none'} blip={models.blip or 'none'} chest={models.chest or 'none'} "
        f"anatomy={models.anatomy or 'none'} device={models.device}"
    )
    from miemss_node.preflight import reference_anatomy_note

    note = reference_anatomy_note(config)
    if note:
        print(f"  note: {note}")
    return EXIT_OK


def _conformance(args: argparse.Namespace) -> int:
    from miemss_node.conformance import conformance_statement

    text = conformance_statement(_load(args))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"conformance statement written to {args.output}")
    return EXIT_OK


def _jobs(args: argparse.Namespace) -> int:
    from miemss_node.queue import repository
    from miemss_node.queue.db import open_database_read_only, session_factory

    config = _load(args)
    engine = open_database_read_only(config.database_url)  # reads only: never creates or migrates
    try:
        with session_factory(engine)() as session:
            rows = repository.list_jobs(session, limit=args.limit)
    finally:
        engine.dispose()
    print(f"{'job':>5} {'state':<10} {'tries':>5}  study / last error")
    for job, study_uid in rows:
        print(f"{job.id:>5} {job.state.value:<10} {job.attempts:>2}/{job.max_attempts:<2}  {study_uid} v{job.version}")
        if job.last_error:
            print(f"{'':>25}{job.last_error}")
    return EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    from miemss_node.clock import utcnow
    from miemss_node.queue import repository
    from miemss_node.queue.db import create_database_engine, session_factory

    config = _load(args)
    sessions = session_factory(create_database_engine(config.database_url))
    with sessions.begin() as session:
        job = repository.requeue_job(session, job_id=args.job_id, now=utcnow())
    if job is None:
        print(f"miemss-node: job {args.job_id} does not exist or is not failed", file=sys.stderr)
        return EXIT_FAILURE
    print(f"job {args.job_id} queued again")
    return EXIT_OK


def _resend(args: argparse.Namespace) -> int:
    from miemss_node.clock import utcnow
    from miemss_node.queue import repository
    from miemss_node.queue.db import create_database_engine, session_factory

    config = _load(args)
    known = {d.name for d in config.destinations}
    if args.destination is not None and args.destination not in known:
        print(f"miemss-node: unknown destination {args.destination!r} (configured: {sorted(known)})", file=sys.stderr)
        return EXIT_USAGE
    sessions = session_factory(create_database_engine(config.database_url))
    with sessions.begin() as session:
        count = repository.reset_deliveries(
            session, study_instance_uid=args.study_uid, destination=args.destination, now=utcnow()
        )
    if count == 0:
        print(f"miemss-node: no results to resend for study {args.study_uid}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{count} delivery(ies) of study {args.study_uid} queued again; the running node sends them")
    return EXIT_OK


def _review(args: argparse.Namespace) -> int:
    from miemss_node.queue.db import create_database_engine, session_factory
    from miemss_node.review.audit import AuditLog
    from miemss_node.review.decide import record_decision
    from miemss_node.review.reviewers import reviewer_named

    config = _load(args)
    reviewer = reviewer_named(config.reviewers, args.reviewer)
    if reviewer is None:
        known = ", ".join(r.name for r in config.reviewers) or "none configured"
        print(f"miemss-node: unknown reviewer {args.reviewer!r} (the config's [[reviewers]]: {known})", file=sys.stderr)
        return EXIT_USAGE
    engine = create_database_engine(config.database_url)
    try:
        decision = record_decision(
            session_factory(engine),
            AuditLog(config.audit_log_path),
            study_uid=args.study_uid,
            reviewer=reviewer,
            via="cli",
            max_attempts=config.worker.max_attempts,
            comment=args.comment,
            accept=bool(args.accept),
            listed=args.finding,
        )
    finally:
        engine.dispose()
    accepted = ", ".join(str(n) for n in decision.accepted) or "none"
    rejected = ", ".join(str(n) for n in decision.rejected) or "none"
    print(f"study {decision.study_uid}: finding(s) accepted {accepted}; rejected {rejected}")
    print(f"job {decision.review_job_id} queued to encode the reviewed version; the running node sends it")
    return EXIT_OK


def _reviewer_token(args: argparse.Namespace) -> int:
    from miemss_node.review.reviewers import new_token, reviewer_table

    if "^" not in args.person_name:
        print('miemss-node: --person-name must be a DICOM Person Name such as "Smith^Jane"', file=sys.stderr)
        return EXIT_USAGE
    token = new_token()
    print(f"token for {args.name} (give it to them; it is not stored anywhere): {token}")
    print("add to the node's config.toml:\n")
    print(reviewer_table(args.name, args.person_name, token))
    return EXIT_OK


def _healthcheck(args: argparse.Namespace) -> int:
    from miemss_node.probe import receiver_problem

    config = _load(args)
    problem = receiver_problem(config)  # the same probe as /healthz
    if problem is not None:
        print(f"unhealthy: {problem}")
        return EXIT_FAILURE
    from miemss_node.storage import disk_problem

    problem = disk_problem(config.node.storage_dir, config.node.min_free_disk_mb * 2**20)
    print(f"unhealthy: {problem}" if problem else "healthy")
    return EXIT_FAILURE if problem else EXIT_OK
