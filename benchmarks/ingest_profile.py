"""Where the time of one small instance goes when the node receives it, against two floors.

dcmtk ``storescu`` sends N CT-like 512x512 instances (the workload of ``benchmarks/ingest.py``) in one
association, in the same run, to:

* dcmtk ``storescp`` writing files (the baseline of ``ingest.py``);
* a pynetdicom Storage SCP that answers Success and keeps nothing: pynetdicom's own per-message cost,
  the floor of any node built on it;
* the node's receiver (no worker), in this process, with its C-STORE handler's parts timed: header
  parse, the duplicate check, the fsync of the file, placing it (link, rename, fsync of the folder)
  and the database claim and commit.

Prints milliseconds per instance for each. Timing wrappers are set on the handler's functions from
here (this script only); they add a few microseconds per call.

    .venv/bin/python benchmarks/ingest_profile.py [--small 300]
"""

from __future__ import annotations

import argparse
import collections
import functools
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.ingest import ENV, small_template, storescu, write_workload  # noqa: E402
from tests.support.net import free_port, wait_for_port  # noqa: E402

#: The handler's timed parts, each indented one within the part above it.
PARTS = (
    "C-STORE handler (ours, all of it)",
    "  persist",
    "    parse the header",
    "    duplicate check (a query)",
    "    fsync, place, claim and commit",
    "      fsync the file",
    "      place it (link, rename, fsync the folder)",
)

#: Seconds spent in each timed part of the handler, summed over the run.
SPENT: dict[str, float] = collections.defaultdict(float)
_LOCK = threading.Lock()


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding its duration to ``SPENT[name]``."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            with _LOCK:
                SPENT[name] += time.perf_counter() - started

    return wrapper


def null_scp_seconds(folder: Path) -> float:
    """storescu to a pynetdicom SCP that answers Success and keeps nothing."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title="NULLSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda _event: 0x0000)])
    assert server is not None
    try:
        return storescu(folder, port, "NULLSCP")
    finally:
        server.shutdown()


def storescp_seconds(folder: Path, output: Path) -> float:
    """storescu to dcmtk's storescp writing files."""
    port = free_port()
    peer = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(output), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        return storescu(folder, port, "STORESCP")
    finally:
        peer.terminate()
        peer.wait()


def node_seconds(folder: Path, root: Path) -> float:
    """storescu to the node's receiver in this process, its handler's parts timed into ``SPENT``."""
    import miemss_node.receive.handlers as handlers
    import miemss_node.receive.scp as scp
    from miemss_node.config import load_config
    from miemss_node.node import Node

    scp.handle_store = timed(PARTS[0], handlers.handle_store)  # type: ignore[assignment]
    store = handlers.InstanceStore
    store.persist = timed(PARTS[1], store.persist)  # type: ignore[method-assign]
    handlers._parse_header = timed(PARTS[2], handlers._parse_header)
    store._stored_copy = timed(PARTS[3], store._stored_copy)  # type: ignore[method-assign]
    store._claim_and_place = timed(PARTS[4], store._claim_and_place)  # type: ignore[method-assign]
    handlers.sync_file = timed(PARTS[5], handlers.sync_file)
    handlers.place_file = timed(PARTS[6], handlers.place_file)
    config = root / "config.toml"
    config.write_text(
        "[node]\nport = 0\nstorage_dir = 'store'\n[worker]\ncount = 0\n[logging]\nlevel = 'WARNING'\n"
        f"[[destinations]]\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = {free_port()}\n",
        encoding="utf-8",
    )
    node = Node(load_config(config), worker_count=0)
    node.start()
    try:
        return storescu(folder, node.port, "MIEMSS")
    finally:
        node.stop()


def main(argv: list[str] | None = None) -> int:
    """Send the workload to the three receivers; print milliseconds per instance."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300, help="instances sent")
    args = parser.parse_args(argv)
    count = args.small
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_workload(root / "small", small_template(), count)
        (root / "storescp").mkdir()
        dcmtk = storescp_seconds(root / "small", root / "storescp")
        null = null_scp_seconds(root / "small")
        node = node_seconds(root / "small", root)
    print(f"{count} CT-like 512x512 instances, one association, milliseconds per instance:")
    print(f"  {'dcmtk storescp (writes files)':<50} {1000 * dcmtk / count:6.1f}")
    print(f"  {'pynetdicom SCP answering Success, keeping nothing':<50} {1000 * null / count:6.1f}")
    print(f"  {'miemss-node receiver':<50} {1000 * node / count:6.1f}")
    for name in PARTS:  # outer parts first; each indented part is within the one above it
        print(f"    {name:<48} {1000 * SPENT[name] / count:6.1f}")
    print(f"node / storescp: {dcmtk / node:.2f}x its rate; pynetdicom's floor: {dcmtk / null:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
