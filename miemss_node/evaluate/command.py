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
    from miemss_node.pipeline.reference import ReferenceModel

logger = logging.getLogger(__name__)

#: Exit codes (as in ``cli.py``).
EXIT_OK = 0
EXIT_USAGE = 2


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``evaluate`` (``--config`` is added by ``cli.py``)."""
    inputs = parser.add_argument_group("inputs")
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


def run_evaluate(args: argparse.Namespace, settings: PipelineSettings) -> int:
    """Run the evaluation the arguments ask for, print the tables and write JSON and PNG."""
    from miemss_node.evaluate.output import enhancement_table, pairs_table, plot_png, synthetic_table, write_json
    from miemss_node.evaluate.pairs import evaluate_pairs
    from miemss_node.evaluate.synthetic import (
        SyntheticPlan,
        evaluate_synthetic,
        load_images,
    )

    files = list(_files(args.images))
    if not files and not args.pair:
        print("miemss-node evaluate: give --images (radiographs) and/or --pair IMAGE MASK")
        return EXIT_USAGE
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
    write_json(json_path, result, pairs)
    print(f"\nJSON: {json_path}")
    if result is not None:
        plot_path = args.output / "evaluation.png"
        plot_png(plot_path, result)
        print(f"plot: {plot_path}")
    return EXIT_OK


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
    parser.add_argument("--output", type=Path, required=True, help="model file to write (e.g. reference.joblib)")
    parser.add_argument("--name", help="name given in the SR (default: the output file's name)")
    parser.add_argument(
        "--picture-modality", default="CR", help="Modality whose settings PNG/JPEG inputs use (default CR)"
    )


def run_reference_fit(args: argparse.Namespace, settings: PipelineSettings) -> int:
    """Fit a reference model on a folder of normal films and save it."""
    from dataclasses import replace

    from miemss_node.pipeline.reference import fit_reference_model, images_in, save_reference_model

    if not args.folder.is_dir():
        print(f"miemss-node reference fit: not a folder: {args.folder}")
        return EXIT_USAGE
    images = (
        replace(image, modality=args.picture_modality) if image.sop_instance_uid is None else image
        for image in images_in(args.folder)
    )
    # The model scores with the settings it was fitted with, so it must not itself be a reference.
    model = fit_reference_model(images, replace(settings, reference_model=""), name=args.name or args.output.name)
    revision = save_reference_model(model, args.output)
    print(f"{args.output}: {model.n_images} image(s), {model.n_patches} patches, revision {revision}")
    print(f'use it with [pipeline] reference_model = "{args.output}"')
    return EXIT_OK
