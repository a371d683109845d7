"""What each entry point imports: ``--help`` and ``check-config`` start without numpy, pydicom or
scikit-learn, and a chest film is analysed without scikit-learn (benchmarks/cold_start.py times it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from miemss_node.config import ModelSettings
from miemss_node.images import job_model_settings, pool_model_settings, resolve_image_processes
from tests.support.paths import REPO_ROOT


def imported_after(statement: str, watched: set[str]) -> set[str]:
    """Which of ``watched`` a fresh interpreter has imported after running ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sorted(set(sys.modules) & {watched!r})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_the_command_line_parses_without_the_image_libraries() -> None:
    heavy = {"numpy", "pydicom", "sklearn", "scipy", "highdicom", "torch"}
    assert imported_after("import miemss_node.cli; miemss_node.cli._build_parser()", heavy) == set()


def test_the_pipeline_imports_scikit_learn_only_for_the_generic_analysis() -> None:
    assert imported_after("import miemss_node.pipeline.runner, miemss_node.encode.study", {"sklearn"}) == set()
    assert imported_after("import miemss_node.pipeline.anomaly", {"sklearn"}) == {"sklearn"}


@pytest.mark.parametrize(
    ("configured", "workers", "cores", "expected"), [(0, 1, 2, 2), (0, 2, 8, 4), (0, 4, 2, 1), (3, 9, 2, 3)]
)
def test_image_processes_default_to_the_workers_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch, configured: int, workers: int, cores: int, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert resolve_image_processes(configured, workers) == expected


@pytest.mark.parametrize(("configured", "expected"), [(0, 1), (2, 2)])
def test_a_worker_with_a_torch_model_keeps_one_image_process_unless_told(
    monkeypatch: pytest.MonkeyPatch, configured: int, expected: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    with_vit = ModelSettings(vit="/models/vit")
    assert resolve_image_processes(configured, 1, with_vit) == expected
    assert resolve_image_processes(0, 1, ModelSettings(blip="/models/blip")) == 8  # BLIP stays in the worker


def test_with_a_pool_the_job_process_loads_only_blip_and_the_pool_all_but_blip() -> None:
    models = ModelSettings(vit="vit", blip="blip", chest="chest", anatomy="anatomy")
    job = job_model_settings(models, 2)
    pool = pool_model_settings(models)
    assert (job.vit, job.blip, job.chest, job.anatomy) == ("", "blip", "", "")
    assert (pool.vit, pool.blip, pool.chest, pool.anatomy) == ("vit", "", "chest", "anatomy")
    assert job_model_settings(models, 1) == models


def test_a_worker_imports_before_its_first_job_what_the_pipeline_and_encoders_defer() -> None:
    statement = (
        "from miemss_node.images import ANALYSIS_IMPORTS, ENCODING_IMPORTS, import_deferred;"
        "import_deferred((*ANALYSIS_IMPORTS, *ENCODING_IMPORTS))"
    )
    watched = {"sklearn", "skimage.measure._find_contours"}
    assert imported_after(statement, watched) == watched


def test_enhancing_analysing_and_outlining_a_chest_film_import_neither_scipy_stats_nor_scipy_signal() -> None:
    # Each costs about 0.5 s of a cold start; scikit-image's restoration and polygon modules import
    # them for a constant and for a function the node does not call (pipeline/wavelet.py, encode/polygon.py).
    statement = (
        "import numpy as np;"
        "import miemss_node.pipeline.runner, miemss_node.pipeline.chest, miemss_node.encode.study;"
        "from miemss_node.pipeline.enhance import enhance, METHODS;"
        "from miemss_node.pipeline.wavelet import bayes_shrink, noise_sigma;"
        "from miemss_node.encode.outline import region_outline;"
        "image = np.random.default_rng(0).random((64, 64)).astype(np.float32);"
        "bayes_shrink(image, noise_sigma(image), 'sym8', 2);"
        "labels = np.zeros((40, 40), dtype=np.int32); labels[5:30, 8:20] = 1;"
        "region_outline(labels, 1)"
    )
    assert imported_after(statement, {"scipy.stats", "scipy.signal"}) == set()


def test_the_chest_analysis_does_not_import_scikit_images_hessian() -> None:
    # skimage.feature.corner imports scipy.stats: 0.4 s of every cold start for one Hessian per blob.
    assert imported_after("import miemss_node.pipeline.chest", {"skimage.feature.corner"}) == set()
