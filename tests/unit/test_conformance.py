"""The conformance statement is generated from what the node runs with, and docs/ holds the current one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from miemss_node import conformance
from miemss_node.config import ENV_OVERRIDES, RESULT_TYPES, Config, load_config
from miemss_node.conformance import RESULT_SOP_CLASSES, conformance_statement, status_constants
from miemss_node.encode import EncodeContext, encode_study
from miemss_node.receive import status as handlers
from miemss_node.receive.scp import build_receiver_ae
from miemss_node.send import SendOutcome
from tests.integration.test_encode_dciodvfy import PERSON_NAME_WARNING
from tests.support.analysis_factory import make_analysis, make_report, read_source
from tests.support.paths import REPO_ROOT

DOCS_COPY = REPO_ROOT / "docs" / "conformance.md"
REGENERATE = "miemss-node conformance --config config.toml --output docs/conformance.md"


def default_config() -> Config:
    return load_config(REPO_ROOT / "config.toml", environ={})


def test_docs_copy_is_the_statement_of_the_default_config() -> None:
    committed = DOCS_COPY.read_text(encoding="utf-8")
    assert committed == conformance_statement(default_config()), f"docs/conformance.md is stale: run `{REGENERATE}`"


def test_every_sop_class_transfer_syntax_and_status_of_the_receiver_is_listed() -> None:
    config = default_config()
    text = conformance_statement(config)
    contexts = build_receiver_ae(config.node).supported_contexts
    assert len(contexts) > 100
    for context in contexts:
        assert f"`{context.abstract_syntax}`" in text
        for syntax in context.transfer_syntax:
            assert f"`{syntax}`" in text
    for constant in status_constants(handlers):
        assert f"| 0x{constant.code:04X} |" in text
    for uid in RESULT_SOP_CLASSES.values():
        assert f"`{uid}`" in text


def test_status_constants_are_read_with_their_docstrings() -> None:
    found = {constant.name: constant for constant in status_constants(handlers)}
    assert set(found) == {name for name in vars(handlers) if name.startswith("STATUS_")}
    assert found["STATUS_OUT_OF_RESOURCES"].code == handlers.STATUS_OUT_OF_RESOURCES
    assert "retry" in found["STATUS_OUT_OF_RESOURCES"].doc


def test_statement_follows_the_configuration(tmp_path: Path) -> None:
    for name in ("node.pem", "node.key", "ca.pem"):
        (tmp_path / name).write_text("not read by the statement", encoding="utf-8")
    path = tmp_path / "site.toml"
    path.write_text(
        "[node]\nae_title = 'NODE'\nport = 104\nallowed_calling_aets = ['MODALITY', 'PACS']\n"
        "require_called_aet = true\nmax_pdu = 65536\n"
        "[tls]\nenabled = true\ncertificate = 'node.pem'\nprivate_key = 'node.key'\nca_certificates = 'ca.pem'\n"
        "require_client_certificate = true\n"
        "[[destinations]]\nname = 'main'\nae_title = 'PACS'\nhost = 'pacs.local'\nport = 11112\n"
        "result_types = ['SEG', 'SR', 'PM']\n"
        "[[destinations]]\nname = 'old'\nae_title = 'OLDPACS'\nhost = 'old.local'\nport = 104\ntls = true\n"
        "result_types = ['SC', 'PDF']\n",
        encoding="utf-8",
    )
    text = conformance_statement(load_config(path, environ={}))
    assert "from `site.toml`" in text and str(tmp_path) not in text
    assert "| Calling AE titles accepted | `MODALITY`, `PACS` |" in text
    assert "| Called AE title | must be `NODE` |" in text
    assert "| Maximum PDU received | 65536 bytes (a longer PDU aborts the association) |" in text
    assert "TLS only (TLS 1.2 or later, PS3.15 B.9); client certificates required" in text
    assert "TLS (1.2 or later) to `old`" in text
    assert "| `main` | `PACS` | `pacs.local:11112` | no | SEG, SR, PM |" in text
    assert "| `old` | `OLDPACS` | `old.local:104` | yes | SC, PDF |" in text
    assert "| PDF | Encapsulated PDF Storage | `1.2.840.10008.5.1.4.1.1.104.1` | `old` |" in text
    assert "| KO | Key Object Selection Document Storage | `1.2.840.10008.5.1.4.1.1.88.59` | none |" in text


def test_send_handling_is_what_classify_status_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [line for line in conformance_statement(default_config()).splitlines() if line.startswith("| 0xA700-0xA7FF")]
    assert len(rows) == 1 and "| retry |" in rows[0]
    monkeypatch.setattr(conformance, "classify_status", lambda _status: SendOutcome.REFUSED)
    text = conformance_statement(default_config())
    assert "| retry |" not in text and "| 0xA700-0xA7FF | Failure: Refused: Out of Resources | refused |" in text


@pytest.mark.filterwarnings(PERSON_NAME_WARNING)
def test_result_sop_classes_are_what_the_encoders_build() -> None:
    source = read_source(str(get_testdata_file("CT_small.dcm")))
    analyses = [make_analysis(source, n_regions=1)]
    context = EncodeContext(job_key="conformance", kinds=frozenset(RESULT_TYPES))
    results = encode_study([source], analyses, make_report(analyses), context)
    assert {result.kind: str(result.dataset.SOPClassUID) for result in results} == RESULT_SOP_CLASSES


def test_cli_writes_the_statement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV_OVERRIDES.values():
        monkeypatch.delenv(variable, raising=False)
    out = tmp_path / "conformance.md"
    command = [sys.executable, "-m", "miemss_node", "conformance", "--config", str(REPO_ROOT / "config.toml")]
    done = subprocess.run([*command, "--output", str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == conformance_statement(default_config())
