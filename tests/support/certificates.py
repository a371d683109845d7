"""A throw-away CA with server and client certificates, made with the openssl command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: A node's own certificate: it serves (receiver) and is presented as a client (sender, health probe).
    node_cert: Path
    node_key: Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(folder: Path) -> Certificates:
    """Create a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a node
    certificate (server and client) for a host name that is not the loopback address."""
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=MIEMSS test CA",
         "-keyout", str(ca_key), "-out", str(ca))
    made = {}
    for role, extension in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
        ("node", "subjectAltName=DNS:miemss.example.org\nextendedKeyUsage=serverAuth,clientAuth"),
    ):
        key, csr, cert, ext = (folder / f"{role}.{suffix}" for suffix in ("key", "csr", "pem", "ext"))
        ext.write_text(extension + "\n")
        _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=miemss-{role}", "-keyout", str(key), "-out", str(csr))
        _run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))
        made[role] = (cert, key)
    return Certificates(ca=ca, server_cert=made["server"][0], server_key=made["server"][1],
                        client_cert=made["client"][0], client_key=made["client"][1],
                        node_cert=made["node"][0], node_key=made["node"][1])
