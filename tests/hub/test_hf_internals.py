"""huggingface_hub's internals, used through one module: an upgrade that moves one says so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.utils._xet
import pytest
from huggingface_hub import CommitOperationAdd

from paramdelta.hub import hf_internals

ROOT = Path(__file__).resolve().parents[2]


def moved(name: str) -> str:
    version = ".".join(huggingface_hub.__version__.split(".")[:2])
    return (
        f"huggingface_hub {version} moved {name}; paramdelta's hub/hf_internals.py was written"
        " for 2.4"
    )


def test_the_installed_huggingface_hub_has_every_internal_the_bot_uses():
    hf_internals.check()
    assert hf_internals.missing() == []
    assert hf_internals.WRITTEN_FOR == "2.4"


def test_huggingface_hub_is_pinned_to_the_minor_the_internals_were_written_for():
    pins = re.findall(r'^\s*"(huggingface_hub[^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert pins == [f"huggingface_hub>={hf_internals.WRITTEN_FOR},<2.5"]


def test_a_moved_function_is_named_with_the_version(monkeypatch):
    monkeypatch.delattr(huggingface_hub.utils._xet, "get_xet_session")
    with pytest.raises(ImportError) as e:
        hf_internals.check()
    assert isinstance(e.value, hf_internals.InternalsMovedError)
    assert str(e.value) == moved("huggingface_hub.utils._xet.get_xet_session")


def test_a_moved_module_and_a_removed_attribute_are_named(monkeypatch):
    monkeypatch.setattr(
        hf_internals,
        "NEEDED",
        (*hf_internals.NEEDED, ("huggingface_hub.utils._gone", "anything")),
    )
    monkeypatch.delattr(CommitOperationAdd, "_is_uploaded")
    with pytest.raises(hf_internals.InternalsMovedError) as e:
        hf_internals.check()
    assert str(e.value) == moved(
        "huggingface_hub.CommitOperationAdd._is_uploaded, huggingface_hub.utils._gone.anything"
    )


def test_the_import_fails_with_the_same_message():
    """At import, before anything runs: not an AttributeError in the middle of a merge."""
    code = (
        "import huggingface_hub.utils._http as http\n"
        "del http.default_client_factory\n"
        "import paramdelta.hub.client\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last == (
        "paramdelta.hub.hf_internals.InternalsMovedError: "
        + moved("huggingface_hub.utils._http.default_client_factory")
    )


def test_is_uploaded_reads_what_preupload_set():
    operation = CommitOperationAdd("x.safetensors", b"x")
    assert hf_internals.is_uploaded(operation) is False
    operation._is_uploaded = True  # what preupload_lfs_files sets
    assert hf_internals.is_uploaded(operation) is True
