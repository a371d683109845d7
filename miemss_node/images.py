"""Analyse a study's stored images: one after the other in the job's process, or side by side in a
pool of processes (``[worker] image_processes``).

Both ways run the same task, :func:`analyse_stored_image`, on each instance: read the file, decode
it, run the pipeline on its frames. So the results are the same either way; only where the work runs
differs. The pool's processes are spawned (never forked: the job's process holds database
connections and lease threads) once per worker and kept, so a job pays neither their start nor their
imports. Each one limits its BLAS/OpenMP threads to its share of the cores and loads the ViT and the
chest models itself; BLIP stays in the job's process, which captions the study's key image once
(:func:`~miemss_node.pipeline.caption.caption_key_image`), and encodes the results: encoding in the
pool too was tried (4 films of 2k: 2.3 s of CPU one after the other, 3.35 s in the pool, the
difference being the images sent both ways; measured on a shared 2-core machine) and is not worth it.
Drawing the SC's overlay is: 0.16 s a 2k film, and only its RGB pixels come back, so when the results
include an SC or a PDF the pool's processes draw it too (``ImagePool.analyse(..., overlay)``).
An outcome's arrays come back through a file in memory, not the pool's pipe (:mod:`miemss_node.handover`).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from miemss_node import handover
from miemss_node.config import Config, LoggingSettings, ModelSettings
from miemss_node.errors import DecodeError, MiemssError, StageError
from miemss_node.pipeline.base import ImageAnalysis, ModelRun, PipelineSettings
from miemss_node.pipeline.models import ModelSet, load_models

if TYPE_CHECKING:
    from miemss_node.encode.templates import CaptureTemplate

logger = logging.getLogger(__name__)

#: How often a pool process checks that the process that started it is still there, in seconds.
ORPHAN_CHECK_SECONDS = 1.0


class ImagePoolBroken(MiemssError):
    """A process of the image pool died (killed, out of memory): the job runs again in a new pool."""


@dataclass(frozen=True, kw_only=True)
class ImageOutcome:
    """What became of one stored instance."""

    sop_instance_uid: str
    #: One per analysed frame; empty when the instance was not analysed.
    analyses: tuple[ImageAnalysis, ...] = ()
    #: Why the instance was not analysed; None when it was.
    skipped: str | None = None
    #: The level the skip is logged at: ERROR when no decoder could read the image (a final failure
    #: for that image), WARNING when a stage failed; None for an instance that is not an image.
    skip_level: int | None = None
    #: The SC overlay of each analysis (``encode.overlay.render_analysis_overlay``), when the pool was
    #: asked to draw them; empty otherwise.
    overlays: tuple[np.ndarray, ...] = ()


def analyse_stored_image(
    sop_instance_uid: str, path: Path, settings: PipelineSettings, models: ModelSet, max_frames: int | None
) -> ImageOutcome:
    """Read, decode and analyse one stored instance (the task of either way of running a study).

    An instance that is not an image, cannot be decoded, or makes a stage fail is skipped with the
    reason, so that one bad image does not cost the study its other images' results. The caption is
    left to the study (:func:`~miemss_node.pipeline.caption.caption_key_image`).

    Raises
    ------
    OSError
        When the stored file cannot be read (the job is retried).
    """
    from miemss_node.pipeline.decode import is_image_dataset, read_dicom_file
    from miemss_node.pipeline.runner import analyse_dataset

    try:
        ds = read_dicom_file(path)
        if not is_image_dataset(ds):
            return ImageOutcome(sop_instance_uid=sop_instance_uid, skipped="not an image (stored, not processed)")
        analyses = analyse_dataset(ds, settings, models, max_frames=max_frames, caption=False)
    except (DecodeError, StageError) as exc:
        level = logging.ERROR if isinstance(exc, DecodeError) else logging.WARNING
        return ImageOutcome(sop_instance_uid=sop_instance_uid, skipped=str(exc), skip_level=level)
    return ImageOutcome(sop_instance_uid=sop_instance_uid, analyses=tuple(analyses))


def resolve_image_processes(configured: int, worker_processes: int, models: ModelSettings | None = None) -> int:
    """The processes that analyse one job's images: as configured, or (0) the job's share of the cores.

    Parameters
    ----------
    configured
        ``[worker] image_processes``; 0 means the cores divided among ``worker_processes``, or 1 when
        ``models`` names a ViT, chest or anatomy model.
    worker_processes
        Jobs that run at the same time on this machine (worker processes or threads).
    models
        ``[models]``: each pool process would load torch and these models again (about 1.2 GB each with
        ViT-base), so by default a worker with them keeps one process within its 3 GB.
    """
    if configured:
        return configured
    if models is not None and (models.vit or models.chest or models.anatomy):
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, worker_processes))


def pool_model_settings(settings: ModelSettings) -> ModelSettings:
    """The models each pool process loads: all but BLIP, which captions once per study."""
    return replace(settings, blip="")


def job_model_settings(settings: ModelSettings, image_processes: int) -> ModelSettings:
    """The models the job's process loads: all of them without a pool, only BLIP with one."""
    if image_processes <= 1:
        return settings
    return replace(settings, vit="", chest="", anatomy="")


#: The order in which :attr:`ModelSet.runs` names the models, by role.
RUN_ORDER = ("vit", "blip", "chest", "anatomy")


def ordered_runs(runs: tuple[ModelRun, ...]) -> tuple[ModelRun, ...]:
    """Runs of models loaded in several processes, in the order one process's ModelSet names them."""
    return tuple(sorted(runs, key=lambda run: RUN_ORDER.index(run.role)))


#: What the analysis imports on first use (so that ``process`` of a chest film starts without
#: scikit-learn): a process that analyses imports them before its first job instead.
ANALYSIS_IMPORTS = ("miemss_node.pipeline.runner", "miemss_node.pipeline.anomaly")
#: What a pool process also imports: it draws the SC's overlay of each image it analyses.
OVERLAY_IMPORTS = ("miemss_node.encode.overlay",)

#: What encoding imports on first use: the contour function of ``skimage.measure`` (a lazily loaded
#: package: its attributes load their modules).
ENCODING_IMPORTS = ("miemss_node.encode.study", "skimage.measure:find_contours")


def import_deferred(modules: tuple[str, ...]) -> None:
    """Import modules ("module" or "module:attribute") now, while a worker waits for jobs, rather than
    in its first job's time."""
    for spec in modules:
        name, _, attribute = spec.partition(":")
        module = importlib.import_module(name)
        if attribute:
            getattr(module, attribute)


@dataclass(frozen=True, kw_only=True)
class _ChildSetup:
    """What a pool process needs to start: everything but the task."""

    settings: PipelineSettings
    models: ModelSettings
    logging: LoggingSettings
    #: BLAS/OpenMP (and torch intra-op) threads of the process.
    threads: int
    parent_pid: int
    #: Where the pool's processes leave their outcomes' arrays for the job's process
    #: (:mod:`miemss_node.handover`).
    handover: Path


#: The pool process's state, set once by :func:`_start_child`.
_CHILD: dict[str, object] = {}


def _start_child(setup: _ChildSetup) -> None:
    """Initialiser of a pool process: logging, thread limits, models; and stop when orphaned."""
    from threadpoolctl import threadpool_limits

    from miemss_node.logconfig import configure_logging

    configure_logging(setup.logging.level, log_format=setup.logging.format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the worker decides
    threadpool_limits(limits=setup.threads)
    models = setup.models if setup.models.threads else replace(setup.models, threads=setup.threads)
    _CHILD["settings"] = setup.settings
    _CHILD["handover"] = setup.handover
    import_deferred((*ANALYSIS_IMPORTS, *OVERLAY_IMPORTS))
    try:
        _CHILD["models"] = load_models(models)
    except MiemssError as exc:
        # An initialiser that raises only breaks the pool; the error reaches the job this way.
        _CHILD["error"] = exc
    # A pool process waits on a queue whose write end it holds too, so it would never see the job's
    # process die (SIGKILL included): it checks, as worker processes do.
    threading.Thread(target=_exit_when_orphaned, args=(setup.parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        threading.Event().wait(ORPHAN_CHECK_SECONDS)
    os._exit(1)


def _child_models() -> ModelSet:
    if "error" in _CHILD:
        raise _CHILD["error"]  # type: ignore[misc]
    models = _CHILD["models"]
    assert isinstance(models, ModelSet)
    return models


def _child_runs() -> tuple[ModelRun, ...]:
    return _child_models().runs


def _child_task(
    sop_instance_uid: str, path: Path, max_frames: int | None, overlay: CaptureTemplate | None
) -> handover.Parcel:
    folder = _CHILD["handover"]
    assert isinstance(folder, Path)
    try:
        return handover.pack(_child_outcome(sop_instance_uid, path, max_frames, overlay), folder)
    except Exception as exc:
        # An exception that does not survive pickling would break the whole pool; send its text.
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - any failure to round-trip means: send the text instead
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


def _child_outcome(
    sop_instance_uid: str, path: Path, max_frames: int | None, overlay: CaptureTemplate | None
) -> ImageOutcome:
    """A pool process's outcome of one instance: analysed, and its overlays drawn when asked."""
    models, settings = _child_models(), _CHILD["settings"]
    assert isinstance(settings, PipelineSettings)
    outcome = analyse_stored_image(sop_instance_uid, path, settings, models, max_frames)
    if overlay is None or not outcome.analyses:
        return outcome
    from miemss_node.encode.overlay import render_analysis_overlay

    return replace(outcome, overlays=tuple(render_analysis_overlay(a, overlay) for a in outcome.analyses))


class ImagePool:
    """Processes that analyse the images of a study side by side; started on first use, kept."""

    def __init__(self, config: Config, processes: int, *, worker_processes: int = 1) -> None:
        if processes < 2:
            raise ValueError(f"an image pool needs at least 2 processes, got {processes}")
        self.config = config
        self.processes = processes
        #: Jobs running at the same time on this machine, each with its pool: they share the cores.
        self.worker_processes = worker_processes
        self._executor: ProcessPoolExecutor | None = None
        self._handover: Path | None = None
        self._runs: tuple[ModelRun, ...] = ()
        self._lock = threading.Lock()

    def _started(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                cores = os.cpu_count() or 1
                if self._handover is None:
                    self._handover = handover.new_folder()
                setup = _ChildSetup(
                    settings=self.config.pipeline,
                    models=pool_model_settings(self.config.models),
                    logging=self.config.logging,
                    threads=max(1, cores // (self.processes * max(1, self.worker_processes))),
                    parent_pid=os.getpid(),
                    handover=self._handover,
                )
                executor = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=get_context("spawn"),
                    initializer=_start_child,
                    initargs=(setup,),
                )
                try:
                    # One call per process: with "spawn" the executor starts a process per call while
                    # none is idle, so all start now. They load the same models: one answer gives
                    # their runs, and any of them their errors.
                    calls = [executor.submit(_child_runs) for _ in range(self.processes)]
                    self._runs = [call.result() for call in calls][0]
                except BaseException as exc:
                    executor.shutdown(wait=False, cancel_futures=True)
                    if isinstance(exc, BrokenProcessPool):
                        raise ImagePoolBroken(f"the image pool's processes did not start: {exc}") from exc
                    raise
                self._executor = executor
            return self._executor

    def model_runs(self) -> tuple[ModelRun, ...]:
        """The runs of the models the pool's processes loaded (starting the pool if needed)."""
        self._started()
        return self._runs

    def warm(self) -> None:
        """Start the processes now (imports, models), so the first job does not wait for them."""
        self._started()

    def analyse(
        self, instances: list[tuple[str, Path]], max_frames: int | None, overlay: CaptureTemplate | None = None
    ) -> list[ImageOutcome]:
        """Analyse ``(SOP Instance UID, file)`` pairs side by side; outcomes in the same order.

        With ``overlay``, each process also draws the SC overlay of the images it analysed (in
        ``ImageOutcome.overlays``): drawing a 2k film takes about 0.16 s, which the job's process would
        otherwise spend once per image, one after the other, before encoding.

        Raises
        ------
        ImagePoolBroken
            When a pool process died; the pool is started again on the next call.
        """
        executor = self._started()
        futures: list[Future[handover.Parcel]] = []
        try:
            futures = [executor.submit(_child_task, uid, path, max_frames, overlay) for uid, path in instances]
            parcels = [future.result() for future in futures]
        except BaseException as exc:
            # The images analysed before the failure leave files nobody will read.
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is None:
                    handover.discard(future.result())
            if isinstance(exc, BrokenProcessPool):
                with self._lock:
                    self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
                raise ImagePoolBroken(f"a process of the image pool died: {exc}") from exc
            raise
        finally:
            for future in futures:  # after a failure, the images not yet started are not analysed
                future.cancel()
        outcomes: list[ImageOutcome] = []
        try:
            for parcel in parcels:
                outcomes.append(handover.unpack(parcel))
        except BaseException:
            for parcel in parcels[len(outcomes) + 1 :]:
                handover.discard(parcel)
            raise
        return outcomes

    def close(self) -> None:
        """Stop the processes (after their current task)."""
        with self._lock:
            executor, self._executor = self._executor, None
            folder, self._handover = self._handover, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if folder is not None:
            handover.remove_folder(folder)
