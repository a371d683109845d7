"""TorchXRayVision benchmark: time per film of the chest classifier and the anatomy model, and the
worker's peak memory with both.

The real architectures with random weights (the cost is the same as with trained ones), saved and
loaded through the node's own code (``tests/support/xrv_models.py``), on the CPU with 2 threads.
Runs alternate between the node's step and its baseline in the same process, so load from other
processes affects each alike; the table gives medians and the ratio.

* Classifier. Node: :meth:`ChestClassifier.classify` on the decoded film (centre crop, resize,
  forward pass, op_norm, Grad-CAM of up to 3 reported pathologies). Baseline: the library's plain
  forward pass of the same 224² tensor (``model(x)`` under ``torch.inference_mode``).
* Anatomy. Node: :meth:`AnatomySegmenter.segment` (padding, resize, forward pass, masks at the
  anatomy's working shape). Baseline: the library's plain forward pass of a 512² tensor.
* Whole frame: :func:`analyse_image` without models and with both, on the same film.
* Peak memory: the peak resident set (VmHWM) of a fresh process that loads both models, as a worker
  does, and analyses the films, against the same process without models.

Run ``.venv/bin/python benchmarks/xrv_models.py [FILM ...]`` (DICOM or PNG; default the WG04 chest CR).
No GPU figures: this machine has none.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

THREADS = 2


def _median_pair(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, sink in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            run()
            sink.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def _film(path: Path | None) -> object:
    from miemss_node.evaluate.real import decode_film
    from tests.support.paths import wg04_chest_cr

    return decode_film(path or wg04_chest_cr())


def timings(films: list[Path], repeats: int) -> None:
    """Print node step vs library forward pass, per model, and the whole frame with and without."""
    import torch

    from miemss_node.config import ModelSettings
    from miemss_node.pipeline.base import PipelineSettings
    from miemss_node.pipeline.models import load_models
    from miemss_node.pipeline.runner import analyse_image
    from tests.support.xrv_models import build_xrv_folders

    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as scratch:
        folders = build_xrv_folders(Path(scratch))
        models = load_models(ModelSettings(chest=str(folders.chest), anatomy=str(folders.anatomy), device="cpu", threads=THREADS))
        assert models.chest is not None and models.anatomy is not None
        classifier, segmenter = models.chest, models.anatomy
        print(f"{'film':32} {'step':10} {'node s':>8} {'library s':>10} {'ratio':>6}")
        for path in films or [None]:
            image = _film(path)
            pixels = image.pixels  # type: ignore[attr-defined]
            name = (path.name if path else "WG04 chest CR")[:32]
            x224 = torch.rand(1, 1, 224, 224) * 2048 - 1024
            x512 = torch.rand(1, 1, 512, 512) * 2048 - 1024

            def plain(module: object, x: torch.Tensor) -> Callable[[], object]:
                def run() -> object:
                    with torch.inference_mode():
                        return module(x)  # type: ignore[operator]

                return run

            node, base = _median_pair(lambda pixels=pixels: classifier.classify(pixels), plain(classifier.module, x224), repeats)
            print(f"{name:32} {'classifier':10} {node:8.2f} {base:10.2f} {node / base:6.2f}")
            node, base = _median_pair(
                lambda pixels=pixels: segmenter.segment(pixels, (256, 256)), plain(segmenter.module, x512), max(1, repeats // 2)
            )
            print(f"{name:32} {'anatomy':10} {node:8.2f} {base:10.2f} {node / base:6.2f}")
            settings = PipelineSettings()
            with_models, without = _median_pair(
                lambda image=image, settings=settings: analyse_image(image, settings, models),  # type: ignore[arg-type]
                lambda image=image, settings=settings: analyse_image(image, settings),  # type: ignore[arg-type]
                max(1, repeats // 2),
            )
            print(f"{name:32} {'frame':10} {with_models:8.2f} {without:10.2f} {with_models / without:6.2f}  (with both / without)")


_MEMORY_CHILD = """
import sys, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads({threads})
from pathlib import Path
from miemss_node.config import ModelSettings
from miemss_node.pipeline.base import PipelineSettings
from miemss_node.pipeline.models import load_models
from miemss_node.pipeline.runner import analyse_image
from benchmarks.xrv_models import _film
settings = ModelSettings(chest={chest!r}, anatomy={anatomy!r}, device="cpu", threads={threads})
models = load_models(settings)
for path in {films!r} or [None]:
    analyse_image(_film(Path(path) if path else None), PipelineSettings(), models)
print([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1])
"""


def peak_memory(films: list[Path]) -> None:
    """Peak resident set of a worker-like process with both models, and without models."""
    from tests.support.xrv_models import build_xrv_folders

    with tempfile.TemporaryDirectory() as scratch:
        folders = build_xrv_folders(Path(scratch))
        for label, chest, anatomy in (("both models", str(folders.chest), str(folders.anatomy)), ("no model", "", "")):
            code = _MEMORY_CHILD.format(
                repo=str(REPO), threads=THREADS, chest=chest, anatomy=anatomy, films=[str(f) for f in films]
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
            peak_mb = int(out.stdout.strip().splitlines()[-1]) / 1024
            print(f"peak resident set, {label}: {peak_mb:.0f} MB (limit 3072 MB with both)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("films", type=Path, nargs="*", help="chest films (DICOM or PNG); default the WG04 chest CR")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    timings(args.films, args.repeats)
    peak_memory(args.films)


if __name__ == "__main__":
    main()
