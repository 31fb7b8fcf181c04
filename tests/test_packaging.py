"""What ships: the wheel holds the package and its data, and no test double; commands start light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pip wheel, and python in subprocesses

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "github", "transformers")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", out, ROOT],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = out.glob("paramdelta_bot-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_wheel_ships_no_test_double(wheel_files):
    modules = {name for name in wheel_files if name.endswith(".py")}
    doubles = {p.name for p in (ROOT / "tests" / "doubles").glob("*.py")} - {"__init__.py"}
    assert not [m for m in modules if not m.startswith("paramdelta/")]
    assert not [m for m in modules if m.rsplit("/", 1)[-1] in doubles], doubles
    # what `paramdelta demo` needs stays
    assert {"paramdelta/testing/hub.py", "paramdelta/testing/checkpoints.py"} <= modules


def test_the_wheel_ships_its_data(wheel_files):
    assert {
        "paramdelta/schemas/watchlist.schema.json",
        "paramdelta/schemas/results.schema.json",
        "paramdelta/templates/model_card.md.j2",
        "paramdelta/checkdata/conversation.json",
        "paramdelta/checkdata/prompts.json",
        "paramdelta/checkdata/texts.json",
        "paramdelta/templates/workflow.yml",
        "paramdelta/templates/workflow-fan-out.yml",
        "paramdelta/py.typed",
    } <= set(wheel_files)


def imported_after(argv: list[str], cwd: Path) -> tuple[int, set[str]]:
    """Run the CLI in a fresh interpreter; its exit code and the heavy packages it imported."""
    code = (
        "import json, sys\n"
        "from paramdelta.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        f"print(json.dumps([rc, sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
    )
    rc, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    return rc, set(heavy)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["merge", "--help"], ["run", "--help"], ["check", "--help"], ["init", "--help"]],
)
def test_help_imports_no_heavy_package(argv, tmp_path):
    assert imported_after(argv, tmp_path) == (0, set())


def test_plan_imports_neither_torch_nor_pygithub(hub_trio, tmp_path):
    (tmp_path / "watchlist.yaml").write_text(
        "targets:\n  - name: t\n    base: org/base\n    post: org/post\n"
        "    new_base: org/new-base\n    output: me/out\n"
    )
    assert imported_after(["plan", "--format", "json"], tmp_path) == (0, set())


TORCH_FIRST = "pip install torch==2.13.0 && pip install "
CPU_INDEX = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("block", ["demo", "test"])
def test_the_readme_installs_torch_before_the_bot(block):
    """The pinned torch first, so `pip install .` never resolves one itself; CI does the same."""
    text = subprocess.run(
        [sys.executable, ROOT / ".ci" / "readme_block.py", block, ROOT / "README.md"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert text.splitlines()[1].startswith(TORCH_FIRST)
    assert ".venv/bin/pip install torch==2.13.0\n" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_says_how_to_get_the_cpu_build():
    """PyPI's Linux torch is the CUDA build: the README names PyTorch's CPU index for the rest."""
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{CPU_INDEX}\n```" in readme
    assert "CUDA build" in readme
