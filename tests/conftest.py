"""Test-wide settings: offline, quiet, isolated from the developer's Hugging Face login.

huggingface_hub reads several of these at import time, so they are set here,
before any test module imports it. HF_ENDPOINT points at one session-wide
loopback FakeHub; tests get it, emptied, from the `fake_hub` fixture.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from paramdelta.testing.hub import FakeHub  # stdlib only: huggingface_hub stays unimported

if TYPE_CHECKING:
    from huggingface_hub import HfApi

HUB_TOKEN = "hf_fake_session_write_token"
OIDC_ID_TOKEN = "fake-ci-oidc-id-token"
_HUB = FakeHub(token=HUB_TOKEN, oidc_subject_token=OIDC_ID_TOKEN).start()
atexit.register(_HUB.stop)

_HF_HOME = tempfile.mkdtemp(prefix="paramdelta-tests-hf-home-")
os.environ.update(
    {
        "HF_ENDPOINT": _HUB.url,
        "HF_HOME": _HF_HOME,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
)
for _name in (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GITHUB_OUTPUT",
    "GITHUB_STEP_SUMMARY",
    "GITHUB_ACTIONS",
):
    os.environ.pop(_name, None)


@pytest.fixture
def progress_bars_unset(monkeypatch):
    """As if HF_HUB_DISABLE_PROGRESS_BARS were unset (the session sets it), with
    huggingface_hub's bar switches restored afterwards."""
    import importlib

    from huggingface_hub import constants
    from huggingface_hub.utils import enable_progress_bars

    bars = importlib.import_module("huggingface_hub.utils.tqdm")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    monkeypatch.setattr(bars, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    enable_progress_bars()
    yield
    enable_progress_bars()


@pytest.fixture
def hub_token() -> str:
    """The write token the session's fake Hub requires."""
    return HUB_TOKEN


@pytest.fixture
def oidc_id_token() -> str:
    """The CI OIDC id token the session's fake Hub trusts in its token exchange."""
    return OIDC_ID_TOKEN


@pytest.fixture
def fake_hub() -> FakeHub:
    """The session's fake Hub (HF_ENDPOINT's target), with no repos, faults or requests."""
    from paramdelta.hub.client import reset_client  # lazily: HF_ENDPOINT is set by now

    _HUB.reset()
    reset_client()  # the process's one pacer forgets the quotas the last test spent
    return _HUB


@pytest.fixture
def hf_api(fake_hub: FakeHub, hub_token: str) -> HfApi:
    """A client for the fake Hub, with its write token."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=fake_hub.url, token=hub_token)


class HubTrio(NamedTuple):
    repos: dict[str, str]  # role -> repo id on the fake Hub
    shas: dict[str, str]  # role -> commit sha of the seeded weights
    local: dict[str, Path]  # role -> the same checkpoint on disk


@pytest.fixture
def hub_trio(
    fake_hub: FakeHub, hub_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> HubTrio:
    """A related base/post/new base trio (bf16, sharded) on the fake Hub; HF_TOKEN is set."""
    monkeypatch.setenv("HF_TOKEN", hub_token)
    from paramdelta.testing.checkpoints import make_trio
    from paramdelta.testing.seed import publish_folder

    repos = {"base": "org/base", "post": "org/post", "new_base": "org/new-base"}
    local = make_trio(tmp_path / "trio", max_shard_size=60_000)
    shas = {role: publish_folder(fake_hub, repos[role], local[role]) for role in repos}
    return HubTrio(repos, shas, local)
