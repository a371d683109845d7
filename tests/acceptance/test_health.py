"""``healthcheck`` and ``/healthz`` run one probe with the node's own TLS and AE settings (issue 13, row 7)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.certificates import make_certificates
from tests.support.net import free_port
from tests.support.served import CLI, ServedNode


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def healthcheck(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "healthcheck", "--config", str(config)], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_a_tls_node_with_an_allow_list_is_healthy_to_both_probes_and_unhealthy_when_stopped(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    port, http_port = free_port(), free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"[node]\nport = {port}\nstorage_dir = 'storage'\nallowed_calling_aets = ['MODALITY']\n"
        f"[worker]\ncount = 0\n[http]\nport = {http_port}\n"
        f"[tls]\nenabled = true\ncertificate = '{certs.node_cert}'\nprivate_key = '{certs.node_key}'\n"
        f"ca_certificates = '{certs.ca}'\nrequire_client_certificate = true\n"
        "[[destinations]]\nae_title = 'PACS'\nhost = '127.0.0.1'\nport = 11113\n",
        encoding="utf-8",
    )
    with ServedNode(config, port) as node:
        done = healthcheck(config)
        assert (done.returncode, done.stdout.strip()) == (0, "healthy"), done.stdout + done.stderr
        status, body = healthz(http_port)
        assert (status, body["status"]) == (200, "ok"), body
    assert node.returncode == 0
    assert " ERROR " not in node.log and " WARNING " not in node.log  # probes are accepted, not rejected
    done = healthcheck(config)
    assert done.returncode == 1
    assert done.stdout.startswith(f"unhealthy: receiver MIEMSS@127.0.0.1:{port} (TLS) did not answer")
