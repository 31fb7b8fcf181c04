"""What the attack tests share: watchlists, and hostile variants of the trio on the fake Hub."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from paramdelta.testing.seed import publish_folder


def target(name: str, output: str, *, new_base: str = "org/new-base", **options: Any) -> str:
    lines = [
        f"  - name: {name}",
        "    base: org/base",
        "    post: org/post",
        f"    new_base: {new_base}",
        f"    output: {output}",
        *(f"    {key}: {json.dumps(value)}" for key, value in options.items()),
    ]
    return "\n".join(lines) + "\n"


def write_watchlist(folder: Path, *targets: str) -> Path:
    path = folder / "watchlist.yaml"
    path.write_text("targets:\n" + "".join(targets))
    return path


def variant(fake_hub, hub_trio, tmp_path: Path, repo: str, files: dict[str, bytes]) -> str:
    """The new base with some files replaced, as ``repo``; its commit sha."""
    folder = tmp_path / repo.replace("/", "--")
    shutil.copytree(hub_trio.local["new_base"], folder)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return publish_folder(fake_hub, repo, folder)


def model_info_json(fake_hub, token: str, repo: str, revision: str = "main") -> dict[str, Any]:
    """What the fake Hub answers to model_info(files_metadata=True), to tamper with."""
    url = f"{fake_hub.url}/api/models/{repo}/revision/{revision}?blobs=true"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(request) as response:  # noqa: S310 - the loopback fake Hub
        return json.load(response)


def file_gets(fake_hub, repo: str, name: str) -> list[Any]:
    """The GET requests that were answered with bytes of ``repo``'s file ``name``."""
    return [
        r
        for r in fake_hub.requests
        if r.method == "GET"
        and r.path.startswith(f"/{repo}/resolve/")
        and r.path.endswith(f"/{name}")
        and r.status in (200, 206)
    ]


def blob_downloads(fake_hub, sha256: str | None = None) -> list[Any]:
    """The whole-file GETs of LFS objects (``sha256``'s, or all) that the blob server answered."""
    return [
        r
        for r in fake_hub.requests
        if r.server == "blobs"
        and r.method == "GET"
        and r.range is None
        and r.path.startswith(f"/lfs/{sha256 or ''}")
    ]


def download_repo(fake_hub, repo: str, folder: Path) -> Path:
    """Every file of ``repo`` at main, written into ``folder``."""
    folder.mkdir()
    for name in fake_hub.list_files(repo):
        (folder / name).write_bytes(fake_hub.read_file(repo, name))
    return folder
