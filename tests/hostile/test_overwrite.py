"""Attack (or a typo): `--overwrite` deleted whatever directory `--output` named, even one of
the merge's own inputs (tried: `--output` set to the new base's folder replaced it)."""

import pytest

from paramdelta.cli import main
from paramdelta.testing.checkpoints import make_trio


@pytest.fixture
def trio(tmp_path):
    return make_trio(tmp_path / "in")


def _merge(trio, output, capsys):
    args = ["--base", str(trio["base"]), "--post", str(trio["post"]), "--new-base"]
    code = main(["merge", *args, str(trio["new_base"]), "--output", str(output), "--overwrite"])
    return code, capsys.readouterr().err


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_replaces_an_input_of_the_merge(trio, tmp_path, capsys):
    before = _snapshot(trio["new_base"])
    code, err = _merge(trio, trio["new_base"], capsys)
    assert code == 2
    assert err == (
        f"paramdelta: error: --output {trio['new_base']}: not an earlier paramdelta output"
        " (it has no .paramdelta-output): --overwrite replaces nothing else\n"
    )
    assert _snapshot(trio["new_base"]) == before


def test_overwrite_never_replaces_an_input_even_if_it_is_an_earlier_output(trio, tmp_path, capsys):
    assert _merge(trio, tmp_path / "v1", capsys)[0] == 0  # v1 is ours: a merge made it
    trio = {**trio, "new_base": tmp_path / "v1"}  # ... and is now an input
    before = _snapshot(tmp_path / "v1")
    code, err = _merge(trio, tmp_path / "v1", capsys)
    assert code == 2
    assert err == (
        f"paramdelta: error: --output {tmp_path / 'v1'}: is (or holds) {tmp_path / 'v1'},"
        " an input of the merge\n"
    )
    (tmp_path / ".paramdelta-output").write_text("{}")  # even marked as an output:
    code, err = _merge(trio, tmp_path, capsys)  # a folder that holds the inputs
    assert (code, err) == (
        2,
        f"paramdelta: error: --output {tmp_path}: is (or holds) {trio['base']}, an input of the"
        " merge\n",
    )
    assert _snapshot(tmp_path / "v1") == before


def test_overwrite_refuses_any_folder_that_is_not_an_earlier_output(trio, tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert _merge(trio, home, capsys)[0] == 2
    assert (home / "thesis.tex").read_text() == "years of work"


def test_overwrite_replaces_an_empty_folder_or_an_earlier_output(trio, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _merge(trio, tmp_path / "empty", capsys)[0] == 0
    assert _merge(trio, tmp_path / "empty", capsys)[0] == 0  # now an earlier output
    assert (tmp_path / "empty" / "model.safetensors").is_file()
