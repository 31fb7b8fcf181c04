"""Attack: `paramdelta publish DIR` committed dotfiles (.env, .git/config) and followed
symlinks out of DIR (a directory `merge --output` wrote, files added to it since)."""

import json

from paramdelta.cli import main
from paramdelta.testing.checkpoints import make_trio

SECRET = "hf_secret_in_a_dotfile"


def test_publish_skips_dotfiles_caches_and_links_out_of_the_folder(
    fake_hub, hub_token, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", hub_token)
    trio = make_trio(tmp_path / "trio")
    folder = tmp_path / "merged"
    argv = ["merge", *(f"--{r.replace('_', '-')}={p}" for r, p in trio.items())]
    assert main([*argv, "--output", str(folder), "--format", "json"]) == 0
    model_files = sorted(p.name for p in folder.iterdir() if p.name != ".paramdelta-output")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text(SECRET)
    (folder / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text(f"[credential]\n\thelper = {SECRET}\n")
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download.lock").write_text(SECRET)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_text(SECRET)
    (folder / "notes.txt").symlink_to(outside / "id_rsa")
    (folder / "extras").symlink_to(outside, target_is_directory=True)
    (folder / "docs").mkdir()
    (folder / "docs" / "config-copy.json").symlink_to(folder / "config.json")  # inside: fine

    capsys.readouterr()
    assert (
        main(["publish", str(folder), "--repo", "me/model", "--dry-run", "--format", "json"]) == 0
    )
    planned = json.loads(capsys.readouterr().out)
    skipped = [".cache/", ".env", ".git/", "__pycache__/", "extras/", "notes.txt"]
    assert planned["skipped"] == skipped
    assert planned["files"] == sorted([*model_files, "docs/config-copy.json"])

    assert main(["publish", str(folder), "--repo", "me/model"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(
        f"skipped (dotfiles, caches, links out of the folder): {', '.join(skipped)}\n"
    )
    assert fake_hub.list_files("me/model") == sorted(
        [".gitattributes", *model_files, "docs/config-copy.json"]
    )
    for name in fake_hub.list_files("me/model"):
        assert SECRET.encode() not in fake_hub.read_file("me/model", name)
    assert (
        fake_hub.read_file("me/model", "docs/config-copy.json")
        == (folder / "config.json").read_bytes()
    )
