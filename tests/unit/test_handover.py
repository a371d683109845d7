"""An outcome handed over through a file in memory comes out equal, and leaves no file behind."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from miemss_node import handover


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / f"{handover.FOLDER_PREFIX}{os.getpid()}-test"
    made.mkdir()
    return made


def test_arrays_come_back_equal_and_writable_and_the_file_is_removed(folder: Path) -> None:
    rng = np.random.default_rng(7)
    outcome = {
        "pixels": rng.random((700, 650), dtype=np.float32),
        "labels": rng.integers(0, 5, (700, 650), dtype=np.uint16),
        "overlay": rng.integers(0, 255, (700, 650, 3), dtype=np.uint8),
        "strided": rng.random((60, 80))[:, ::2],  # not contiguous: pickled in the head
        "text": "right lower zone",
    }
    parcel = handover.pack(outcome, folder)
    assert parcel.path is not None and Path(parcel.path).parent == folder
    assert len(parcel.head) < 30_000, "only the small strided array and the arrays' description crosses the pipe"
    back = handover.unpack(parcel)
    assert not Path(parcel.path).exists()
    assert list(folder.iterdir()) == []
    assert back["text"] == outcome["text"]
    for key in ("pixels", "labels", "overlay", "strided"):
        assert back[key].dtype == outcome[key].dtype
        assert np.array_equal(back[key], outcome[key])
    back["pixels"][0, 0] = -1.0  # writable, as the packing process's arrays were
    assert outcome["pixels"][0, 0] != -1.0


def test_a_small_outcome_crosses_the_pipe_whole(folder: Path) -> None:
    parcel = handover.pack({"scores": np.arange(10.0)}, folder)
    assert parcel.path is None and list(folder.iterdir()) == []
    assert np.array_equal(handover.unpack(parcel)["scores"], np.arange(10.0))


def test_a_truncated_file_is_an_error_and_is_removed(folder: Path) -> None:
    parcel = handover.pack(np.ones((1024, 1024), np.float32), folder)
    assert parcel.path is not None
    os.truncate(parcel.path, 1000)
    with pytest.raises(OSError, match="holds 1000 bytes"):
        handover.unpack(parcel)
    assert not Path(parcel.path).exists()


def test_folders_of_processes_that_are_gone_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    child = multiprocessing.get_context("spawn").Process(target=int)
    child.start()
    child.join()
    assert child.pid is not None
    stale = tmp_path / f"{handover.FOLDER_PREFIX}{child.pid}-abc"
    live = tmp_path / f"{handover.FOLDER_PREFIX}{os.getpid()}-def"
    for made in (stale, live):
        made.mkdir()
        (made / "parcel-1").write_bytes(b"x" * 10)
    handover.remove_stale_folders(tmp_path)
    assert not stale.exists() and live.exists()


def test_without_room_in_the_folder_the_outcome_crosses_the_pipe_whole(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's /dev/shm is 64 MB by default: too small for two 2k films' outcomes."""
    pixels = np.ones((1024, 1024), np.float32)
    real_statvfs = os.statvfs

    class Full:
        f_bavail, f_frsize = 100, 4096

    monkeypatch.setattr(handover.os, "statvfs", lambda path: Full())
    parcel = handover.pack(pixels, folder)
    assert parcel.path is None and list(folder.iterdir()) == []
    assert np.array_equal(handover.unpack(parcel), pixels)

    monkeypatch.setattr(handover.os, "statvfs", real_statvfs)

    real_fdopen = os.fdopen

    class FullDisk:
        """The parcel's file, on a disk that fills up at the first write (its descriptor is still closed)."""

        def __init__(self, descriptor: int, mode: str) -> None:
            self.file = real_fdopen(descriptor, mode)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, data: object) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(handover.os, "fdopen", FullDisk)
    descriptors = len(os.listdir("/proc/self/fd"))
    parcel = handover.pack(pixels, folder)
    assert parcel.path is None and list(folder.iterdir()) == [], "the half-written file is removed"
    assert len(os.listdir("/proc/self/fd")) == descriptors, "the parcel's descriptor is closed"
    assert np.array_equal(handover.unpack(parcel), pixels)
