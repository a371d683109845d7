"""The ``miemss-node evaluate`` and ``miemss-node reference fit`` commands (argument parsing and output).

``cli.py`` only registers these; everything else lives here, so the CLI module stays small.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from miemss_node.errors import MiemssError
from miemss_node.pipeline.base import PipelineSettings

if TYPE_CHECKING:
    from miemss_node.config import Config
    from miemss_node.pipeline.models import ModelSet
    from miemss_node.pipeline.reference import ReferenceModel
    from miemss_node.pipeline.xrv_models import AnatomySegmenter

logger = logging.getLogger(__name__)

#: Exit codes (as in ``cli.py``).
EXIT_OK = 0
EXIT_USAGE = 2


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``evaluate`` (``--config`` is added by ``cli.py``)."""
    feedback = parser.add_argument_group("reviewers' decisions (the node's database, from --config)")
    feedback.add_argument(
        "--feedback",
        action="store_true",
        help="precision of the findings reviewers decided on, per finding type and score band, and a proposed threshold",
    )
    feedback.add_argument(
        "--target-precision",
        type=float,
        default=0.8,
        help="precision the proposed threshold aims for (default 0.8)",
    )
    real = parser.add_argument_group("real films (the chest analysis as the node runs it)")
    real.add_argument("--zones", type=Path, help="zone file (JSON): regions on objects, outside the thorax, on the disease")
    real.add_argument(
        "--labels",
        type=Path,
        help="labels CSV (file, finding[, view], optional 0/1 columns named as the chest classifier's pathologies): AUC",
    )
    real.add_argument("--data-root", type=Path, help="folder the zone file's paths are relative to (default: its own)")
    real.add_argument(
        "--insert-nodules",
        action="store_true",
        help="also insert nodules into the zone file's normal films: sensitivity at 0.5/1/2 FP per film, Dice",
    )
    real.add_argument("--lesion-trials", type=int, default=3, help="lesioned copies per film and contrast (default 3)")
    inputs = parser.add_argument_group("synthetic lesions (the generic analysis's detectors)")
    inputs.add_argument(
        "--images", type=Path, nargs="+", default=[], help="real radiographs (files or folders) for synthetic lesions"
    )
    inputs.add_argument(
        "--pair",
        type=Path,
        nargs=2,
        action="append",
        default=[],
        metavar=("IMAGE", "MASK"),
        help="an image and its reference mask (PNG, or a DICOM SEG referencing the image); repeatable",
    )
    reference = parser.add_argument_group("reference model (the 'reference' detector)")
    reference.add_argument("--reference-model", type=Path, help="a model from `reference fit`")
    reference.add_argument("--normals", type=Path, help="a folder of normal films to fit one on")
    reference.add_argument(
        "--no-reference", action="store_true", help="skip it (default: leave-one-out over --images)"
    )
    plan = parser.add_argument_group("synthetic lesions")
    plan.add_argument("--contrasts", type=float, nargs="+", default=[0.03, 0.06, 0.12], help="peak added display value")
    plan.add_argument("--kinds", nargs="+", default=["nodule", "opacity"], choices=["nodule", "opacity"])
    plan.add_argument("--lesions", type=int, default=3, help="lesions per image (default 3)")
    plan.add_argument("--trials", type=int, default=2, help="lesioned copies per image, kind and contrast (default 2)")
    plan.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--picture-modality", default="CR", help="Modality whose settings PNG/JPEG inputs use (default CR)"
    )
    parser.add_argument("--output", type=Path, default=Path("evaluation"), help="folder for evaluation.json/.png")


def run_evaluate(args: argparse.Namespace, settings: PipelineSettings, models: ModelSet | None = None) -> int:
    """Run the evaluation the arguments ask for, print the tables and write JSON and PNG.

    ``models`` (the node's ``[models]``) run on the real films of ``--zones`` and ``--labels``.
    """
    from miemss_node.evaluate.output import enhancement_table, pairs_table, plot_png, synthetic_table, write_json
    from miemss_node.evaluate.pairs import evaluate_pairs
    from miemss_node.evaluate.synthetic import (
        SyntheticPlan,
        evaluate_synthetic,
        load_images,
    )

    files = list(_files(args.images))
    if not files and not args.pair and args.zones is None and args.labels is None:
        print("miemss-node evaluate: give --zones FILE, --labels CSV, --images (radiographs) and/or --pair IMAGE MASK")
        return EXIT_USAGE
    real = run_real(args, settings, models) if args.zones is not None or args.labels is not None else None
    result = None
    if files:
        images = load_images(files, picture_modality=args.picture_modality)
        if not images:
            raise MiemssError("none of the --images could be decoded")
        reference_for, label = _references(args, images, settings)
        plan = SyntheticPlan(
            kinds=tuple(args.kinds),
            contrasts=tuple(args.contrasts),
            lesions_per_image=args.lesions,
            trials=args.trials,
            seed=args.seed,
        )
        result = evaluate_synthetic(
            images, settings, plan, reference_for, reference_label=label, progress=lambda line: print(f"  {line}")
        )
        print(synthetic_table(result))
        print()
        print("Enhancement (Poisson-Gaussian noise added to each film, gain 500, sigma 0.01):")
        print(enhancement_table(result))
    pairs = evaluate_pairs([(image, mask) for image, mask in args.pair], settings) if args.pair else []
    if pairs:
        print()
        print(pairs_table([p for p in pairs if "error" not in p]))
        for failed in (p for p in pairs if "error" in p):
            print(f"{failed['image']}: not evaluated: {failed['error']}")
    json_path = args.output / "evaluation.json"
    write_json(json_path, result, pairs, real)
    print(f"\nJSON: {json_path}")
    if result is not None:
        plot_path = args.output / "evaluation.png"
        plot_png(plot_path, result)
        print(f"plot: {plot_path}")
    return EXIT_OK


def run_feedback(args: argparse.Namespace, config: Config) -> int:
    """Print precision per finding type and score band from the stored decisions, and a proposed
    threshold; write them to ``feedback.json`` in ``--output``. Reads the database, never changes it."""
    import json
    from dataclasses import asdict

    from miemss_node.queue import repository
    from miemss_node.queue.db import open_database_read_only, session_factory
    from miemss_node.review.feedback import (
        DecidedFinding,
        feedback_table,
        precision_rows,
        proposal_text,
        propose_threshold,
    )

    if not 0.0 < args.target_precision <= 1.0:
        print("miemss-node evaluate: --target-precision must be in (0, 1]")
        return EXIT_USAGE
    engine = open_database_read_only(config.database_url)
    try:
        with session_factory(engine)() as session:
            decided = [
                DecidedFinding(kind=finding.kind, score=finding.max_score, accepted=accepted)
                for finding, accepted in repository.decided_findings(session)
            ]
    finally:
        engine.dispose()
    rows = precision_rows(decided)
    proposal = propose_threshold(decided, args.target_precision)
    print(f"Reviewers' decisions: {len(decided)} finding(s), {sum(f.accepted for f in decided)} accepted.")
    if rows:
        print("Precision (share of findings accepted), by finding type and score band (the region's maximum score):")
        print(feedback_table(rows))
    print(proposal_text(proposal, config.pipeline.threshold, len(decided)))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "feedback.json"
    payload = {"decided": len(decided), "precision": [asdict(r) for r in rows], "proposal": asdict(proposal)}
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"\nJSON: {path}")
    return EXIT_OK


def run_real(args: argparse.Namespace, settings: PipelineSettings, models: ModelSet | None = None) -> dict[str, object]:
    """Evaluate on real films (zone file and/or labels CSV), print the summaries, return them for the JSON.

    A labels CSV's pathology columns also give an AUC per pathology of the chest classifier.
    """
    from dataclasses import asdict

    from miemss_node.evaluate.output import real_table
    from miemss_node.evaluate.real import evaluate_films, films_from_labels, summarise_films
    from miemss_node.evaluate.zones import load_zone_file

    out: dict[str, object] = {}
    sources = []
    if args.zones is not None:
        sources.append(("zones", load_zone_file(args.zones), args.data_root or args.zones.parent))
    if args.labels is not None:
        sources.append(("labels", films_from_labels(args.labels), args.data_root or args.labels.parent))
    for name, films, root in sources:
        print(f"Real films ({name}: {len(films)}):")
        results = evaluate_films(films, root, settings, progress=lambda line: print(f"  {line}"), models=models)
        summaries = {
            split: summarise_films([r for r in results if r.split == split])
            for split in sorted({r.split for r in results})
        }
        summaries["all"] = summarise_films(results)
        print(real_table(summaries))
        out[name] = {"films": [asdict(r) for r in results], "summary": summaries}
        if name == "labels":
            from miemss_node.evaluate.pathology import pathology_aucs, pathology_labels, pathology_table

            aucs = pathology_aucs(results, pathology_labels(args.labels))
            print("  chest classifier, AUC per pathology:")
            print(pathology_table(aucs))
            out["pathology_auc"] = aucs
        if name == "zones" and args.insert_nodules:
            out["lesion_insertion"] = _lesions(films, root, settings, args)
    return out


def _lesions(films: list, root: Path, settings: PipelineSettings, args: argparse.Namespace) -> dict[str, object]:
    from dataclasses import asdict

    from miemss_node.evaluate.froc import FrocPlan, froc_summary, lesion_insertion
    from miemss_node.evaluate.output import froc_table
    from miemss_node.evaluate.real import decode_film
    from miemss_node.evaluate.zones import zone_masks
    from miemss_node.pipeline.chest import mm_per_pixel

    out: dict[str, object] = {}
    for split in sorted({film.split for film in films}):
        normals = []
        for film in films:
            if film.status != "normal" or film.split != split:
                continue
            image = decode_film(root / film.file, view=film.view)
            shape = (int(image.pixels.shape[0]), int(image.pixels.shape[1]))
            normals.append((film.file, image, zone_masks(film, shape, mm_per_pixel(image, shape[0])).lung_interiors))
        if not normals:
            continue
        print(f"Lesion insertion into the {len(normals)} normal {split} film(s):")
        plan = FrocPlan(trials=args.lesion_trials, seed=args.seed)
        runs = lesion_insertion(normals, settings, plan, progress=lambda line: print(f"  {line}"))
        rows = froc_summary(runs, len(normals))
        focal_rows = froc_summary(runs, len(normals), focal_only=True)
        print("  every region counts (lung zones too):")
        print(froc_table(rows, plan))
        print("  round densities only (the focal detector on its own):")
        print(froc_table(focal_rows, plan))
        out[split] = {
            "plan": asdict(plan),
            "summary": rows,
            "summary_round_densities": focal_rows,
            "runs": [asdict(run) for run in runs],
        }
    return out


def _files(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise MiemssError(f"input not found: {path}")


def _references(
    args: argparse.Namespace, images: list, settings: PipelineSettings
) -> tuple[Callable[[int], ReferenceModel | None] | None, str]:
    from miemss_node.evaluate.synthetic import leave_one_out_references
    from miemss_node.pipeline.reference import fit_reference_model, images_in, load_reference_model

    if args.no_reference:
        return None, "none"
    if args.reference_model is not None:
        model = load_reference_model(args.reference_model)
        return (lambda _index: model), f"given: {model.name} ({model.revision})"
    if args.normals is not None:
        model = fit_reference_model(images_in(args.normals), settings, name=args.normals.name)
        return (lambda _index: model), f"fitted on {args.normals} ({model.n_images} films)"
    if len(images) < 2:
        return None, "none (leave-one-out needs 2 or more images)"
    return leave_one_out_references(images, settings), "leave-one-out over the evaluation films"


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``reference fit`` (``--config`` is added by ``cli.py``)."""
    parser.add_argument("folder", type=Path, help="folder of normal films (DICOM, PNG, JPEG)")
    parser.add_argument(
        "--add-rejected",
        action="store_true",
        help="also fit on the node's stored films whose every finding a reviewer rejected (needs --config)",
    )
    parser.add_argument("--output", type=Path, required=True, help="model file to write (e.g. reference.joblib)")
    parser.add_argument("--name", help="name given in the SR (default: the output file's name)")
    parser.add_argument(
        "--picture-modality", default="CR", help="Modality whose settings PNG/JPEG inputs use (default CR)"
    )


def run_reference_fit(args: argparse.Namespace, config: Config) -> int:
    """Fit a reference model on a folder of normal films (and, with ``--add-rejected``, the stored
    films whose every finding was rejected) and save it."""
    import itertools
    from dataclasses import replace

    from miemss_node.pipeline.reference import fit_reference_model, images_from_files, images_in, save_reference_model

    settings = config.pipeline
    if not args.folder.is_dir():
        print(f"miemss-node reference fit: not a folder: {args.folder}")
        return EXIT_USAGE
    rejected = rejected_films(config) if args.add_rejected else []
    if args.add_rejected:
        print(f"{len(rejected)} stored film(s) whose every finding a reviewer rejected are added as normals")
    images = (
        replace(image, modality=args.picture_modality) if image.sop_instance_uid is None else image
        for image in itertools.chain(images_in(args.folder), images_from_files(rejected))
    )
    # The model scores with the settings it was fitted with, so it must not itself be a reference.
    model = fit_reference_model(images, replace(settings, reference_model=""), name=args.name or args.output.name)
    revision = save_reference_model(model, args.output)
    print(f"{args.output}: {model.n_images} image(s), {model.n_patches} patches, revision {revision}")
    print(f'use it with [pipeline] reference_model = "{args.output}"')
    return EXIT_OK


def rejected_films(config: Config) -> list[Path]:
    """The stored films whose every finding a reviewer rejected (read from the node's database)."""
    from miemss_node.queue import repository
    from miemss_node.queue.db import open_database_read_only, session_factory

    engine = open_database_read_only(config.database_url)
    try:
        with session_factory(engine)() as session:
            instances = repository.instances_with_all_findings_rejected(session)
    finally:
        engine.dispose()
    return [config.node.storage_dir / instance.path for instance in instances]


def add_chest_reference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``reference chest`` (``--config`` is added by ``cli.py``)."""
    parser.add_argument("inputs", type=Path, nargs="+", help="normal frontal chest films (files or folders)")
    parser.add_argument(
        "--focal-films",
        type=Path,
        nargs="+",
        default=[],
        help="more chest films whose lungs hold no nodule: they only train the round-density model",
    )
    parser.add_argument("--output", type=Path, required=True, help="reference file to write (JSON)")
    parser.add_argument("--name", help="name given in the report and the SR (default: the output file's name)")
    parser.add_argument(
        "--provenance",
        type=Path,
        help="CSV with columns file,source,licence: recorded in the reference for each film (by file name)",
    )
    parser.add_argument(
        "--picture-modality", default="CR", help="Modality whose settings PNG/JPEG inputs use (default CR)"
    )


def run_chest_reference(
    args: argparse.Namespace, settings: PipelineSettings, anatomy_model: AnatomySegmenter | None = None
) -> int:
    """Build the chest analysis's normal reference from normal films and save it.

    With ``anatomy_model`` (``[models] anatomy`` of ``--config``) the films are measured on its lungs.
    """
    import csv

    from miemss_node.evaluate.synthetic import load_images
    from miemss_node.pipeline.chest_reference import fit_from_films, save_chest_reference

    files = list(_files(args.inputs))
    provenance: dict[str, dict[str, str]] = {}
    if args.provenance is not None:
        with args.provenance.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                provenance[Path(row["file"]).name] = {k: v for k, v in row.items() if k != "file" and v}
    images = load_images(files, picture_modality=args.picture_modality, assume_spacing=False)
    focal = load_images(list(_files(args.focal_films)), picture_modality=args.picture_modality, assume_spacing=False)
    reference = fit_from_films(
        ((item.name, item.image) for item in images),
        settings,
        name=args.name or args.output.name,
        provenance=provenance,
        focal_images=((item.name, item.image) for item in focal),
        anatomy_model=anatomy_model,
    )
    revision = save_chest_reference(reference, args.output)
    model = reference.focal_model
    trained = f"; round-density model from {model.positives} inserted-nodule and {model.negatives} other candidates" if model else ""
    print(
        f"{args.output}: {reference.n_films} normal frontal chest film(s), anatomy {reference.anatomy}{trained}, "
        f"revision {revision}"
    )
    print(f'use it with [pipeline] chest_reference = "{args.output}"')
    return EXIT_OK
