"""Ingest speed: dcmtk ``storescu`` sending the same workload to storescp, Orthanc and miemss-node.

Workloads (real pixels under new UIDs, uncompressed 16-bit):
* small: N CT-like 512x512 instances (the real CT slices in ../shared/data/dicom/other/ct_series_3slices,
  else pydicom's CT_small upscaled);
* large: M CR-like 2500x3000 instances (the WG04 chest CR from pydicom-data, resized).

Every peer runs with ``TCP_NODELAY=1`` in its environment (Debian's dcmtk leaves Nagle's algorithm
on otherwise); the node sets TCP_NODELAY on its own sockets and runs with no worker, so only
receiving is measured. Prints instances/s, MB/s and the ratio to storescp.

    .venv/bin/python benchmarks/ingest.py [--small 500] [--large 40] [--peers storescp,orthanc,miemss]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage.transform import resize

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.net import free_port, wait_for_port  # noqa: E402

SHARED_CT = REPO.parent / "shared" / "data" / "dicom" / "other" / "ct_series_3slices"
ENV = {**os.environ, "TCP_NODELAY": "1"}






def uncompressed(ds: Dataset, pixels: np.ndarray) -> Dataset:
    ds = ds.copy()
    ds.file_meta = ds.file_meta.copy()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, ds.get("PhotometricInterpretation", "MONOCHROME2")
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "LossyImageCompression"):
        if keyword in ds:
            del ds[keyword]
    return ds


def write_workload(folder: Path, template: Dataset, count: int) -> int:
    """Write ``count`` instances of ``template`` under new UIDs; returns the bytes written."""
    folder.mkdir(parents=True)
    study = generate_uid()
    total = 0
    for index in range(count):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = template.SeriesInstanceUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def small_template() -> Dataset:
    files = sorted(SHARED_CT.glob("*.dcm")) if SHARED_CT.is_dir() else []
    source = dcmread(files[0] if files else get_testdata_file("CT_small.dcm"))
    pixels = source.pixel_array.astype(np.float64)
    if pixels.shape != (512, 512):
        pixels = resize(pixels, (512, 512), preserve_range=True)
    ds = uncompressed(source, np.clip(pixels - pixels.min(), 0, 65535))
    ds.SeriesInstanceUID = generate_uid()
    return ds


def large_template() -> Dataset:
    source = dcmread(get_testdata_file("RG1_J2KI.dcm"))
    pixels = resize(source.pixel_array.astype(np.float64), (3000, 2500), preserve_range=True)
    ds = uncompressed(source, pixels)
    ds.SeriesInstanceUID = generate_uid()
    return ds


def storescu(folder: Path, port: int, called: str) -> float:
    """Send every file of ``folder`` in one association; returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", "BENCH", "-aec", called, "--scan-directories", "-xs", "127.0.0.1", str(port), str(folder)],
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


class Peer:
    """A receiving peer started before and stopped after the workloads."""

    name = ""
    called = "ANY"

    def start(self, folder: Path) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


class StoreScp(Peer):
    name, called = "storescp", "STORESCP"

    def start(self, folder: Path) -> int:
        port = free_port()
        (folder / "in").mkdir()
        self.process = subprocess.Popen(
            ["storescp", "-aet", self.called, "-od", str(folder / "in"), str(port)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, process=self.process)
        return port


class Orthanc(Peer):
    name, called = "orthanc", "ORTHANC"

    def start(self, folder: Path) -> int:
        port, http = free_port(), free_port()
        config = {
            "Name": "bench", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "DicomAet": self.called, "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.process = subprocess.Popen(
            ["Orthanc", str(folder / "orthanc.json")], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(port)
        urllib.request.urlopen(f"http://127.0.0.1:{http}/system", timeout=30).read()
        return port


class Miemss(Peer):
    name, called = "miemss-node", "MIEMSS"

    def start(self, folder: Path) -> int:
        port = free_port()
        config = folder / "config.toml"
        # serve needs a destination; with no worker nothing is processed, so nothing is ever sent to it.
        config.write_text(
            f"[node]\nport={port}\nstorage_dir='store'\nmax_associations=20\n[worker]\ncount=0\n[logging]\nlevel='WARNING'\n"
            "[[destinations]]\nae_title='PACS'\nhost='127.0.0.1'\nport=11113\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "miemss_node", "serve", "--config", str(config)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, process=self.process)
        return port


PEERS = {"storescp": StoreScp, "orthanc": Orthanc, "miemss": Miemss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=40)
    parser.add_argument("--peers", default="storescp,orthanc,miemss")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small_bytes = write_workload(root / "small", small_template(), args.small) if args.small else 0
        large_bytes = write_workload(root / "large", large_template(), args.large) if args.large else 0
        rows = []
        for key in args.peers.split(","):
            peer = PEERS[key]()
            for workload, count, size in (("small", args.small, small_bytes), ("large", args.large, large_bytes)):
                if not count:  # --small 0 or --large 0 leaves that workload out
                    continue
                folder = root / f"{key}-{workload}"
                folder.mkdir()
                port = peer.start(folder)
                try:
                    seconds = storescu(root / workload, port, peer.called)
                finally:
                    peer.stop()
                    shutil.rmtree(folder, ignore_errors=True)
                rows.append((peer.name, workload, count, count / seconds, size / seconds / 1e6))
    baseline = {workload: (ips, mbps) for name, workload, _, ips, mbps in rows if name == "storescp"}
    print(f"{'peer':<12} {'workload':<8} {'instances':>9} {'inst/s':>8} {'MB/s':>8} {'x storescp':>11}")
    for name, workload, count, ips, mbps in rows:
        shown = "-"
        if workload in baseline:
            ratio = ips / baseline[workload][0] if workload == "small" else mbps / baseline[workload][1]
            shown = f"{ratio:.2f}"
        print(f"{name:<12} {workload:<8} {count:>9} {ips:>8.1f} {mbps:>8.1f} {shown:>11}")
    print("ratio: instances/s for the small workload, MB/s for the large one")


if __name__ == "__main__":
    main()
