"""RSS of `miemss-node serve` before and after a hostile PDU: a P-DATA-TF header announcing 4 GiB,
then --megabytes of data (200 by default), sent on one connection over loopback.

The node must abort the association before reading the body (its ``[node] max_pdu`` is far
smaller), so its memory stays flat. ``--repo`` runs another checkout's code (e.g. the main branch
before the fix) with this checkout's virtual environment, for a before/after comparison.

    .venv/bin/python benchmarks/hostile_pdu.py
    .venv/bin/python benchmarks/hostile_pdu.py --repo /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.fuzzing import node_is_serving  # noqa: E402
from tests.support.hostile import rss_bytes  # noqa: E402
from tests.support.net import free_port, wait_for_port  # noqa: E402


def send_hostile_pdu(port: int, megabytes: int, pid: int) -> tuple[int, bytes, int]:
    """Send the PDU; return the bytes of body sent before the node stopped reading, its reply, and
    the node's RSS a second later, with the connection still open."""
    sent = 0
    chunk = b"\x00" * 2**20
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(struct.pack(">BBL", 0x04, 0, 2**32 - 1))
            while sent < megabytes * 2**20:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        try:
            sock.settimeout(5)
            reply = sock.recv(16)
        except OSError:
            reply = b""
        time.sleep(1.0)
        during = rss_bytes(pid)
    return sent, reply, during


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose miemss_node is run")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text(
            f"[node]\nport = {port}\nstorage_dir = 'storage'\nmax_pdu = 16384\n[worker]\ncount = 0\n"
            "[logging]\nlevel = 'WARNING'\n"
            # serve needs a destination; with no worker, nothing is ever sent to it.
            f"[[destinations]]\nname = 'pacs'\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = {free_port()}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(args.repo)}
        serve = subprocess.Popen(
            [sys.executable, "-m", "miemss_node", "serve", "--config", str(config)],
            cwd=args.repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(port, process=serve)
            assert node_is_serving(port)
            time.sleep(1.0)
            before = rss_bytes(serve.pid)
            started = time.monotonic()
            sent, reply, during = send_hostile_pdu(port, args.megabytes, serve.pid)
            seconds = time.monotonic() - started
            time.sleep(2.0)
            after = rss_bytes(serve.pid)
            serving = node_is_serving(port)
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
    answer = "A-ABORT" if reply[:1] == b"\x07" else ("closed" if not reply else f"0x{reply[0]:02X}...")
    print(f"code: {args.repo}")
    print(f"hostile PDU: header announcing 4 GiB, then {sent / 2**20:.0f} MB of {args.megabytes} MB sent "
          f"in {seconds:.1f} s before the node stopped reading; its answer: {answer}")
    print(f"serve RSS: before {before / 2**20:.1f} MB; with the connection still open {during / 2**20:.1f} MB "
          f"(+{(during - before) / 2**20:.1f} MB, ratio {during / before:.2f}); after it closed "
          f"{after / 2**20:.1f} MB; still answers C-ECHO: {serving}")


if __name__ == "__main__":
    main()
