"""The merge-and-publish stages of the pipeline: the files a merge writes besides its weights."""

import json

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.stages import preflight, stage
from paramdelta.hub import content_ids
from paramdelta.pipeline.publish import (
    CardSettings,
    merge_to_directory,
    result_files,
    upload_while_writing,
)
from paramdelta.rendering import chart
from paramdelta.testing.checkpoints import make_trio

QUIET = Runtime(progress=False)


def _sources(trio):
    return {role: LocalSource(path) for role, path in trio.items()}


def test_a_local_merge_writes_card_record_and_chart_naming_each_input_by_its_path(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # inputs given relative to here: the record holds where they are
    trio = make_trio("in")
    (trio["post"] / "README.md").write_text("---\nlicense: apache-2.0\n---\n# post\n")
    sources = _sources(trio)
    result = merge_to_directory(preflight(sources, Recipe()), sources, tmp_path / "out", QUIET)
    out = result.out_dir
    assert {"README.md", "paramdelta.json", chart.FILENAME} <= set(result.files)
    assert all(result.files[f] == "result" for f in ("README.md", "paramdelta.json"))
    record = json.loads((out / "paramdelta.json").read_text())
    entries = {c["role"]: c for c in record["checkpoints"]}
    for role, path in trio.items():
        assert (entries[role]["path"], entries[role]["repo"], entries[role]["sha"]) == (
            str(tmp_path / path),
            None,
            None,
        )
    assert entries["post"]["license"] == "apache-2.0"  # from the local README's front matter
    assert "license" not in entries["base"]
    assert record["output"]["repo"] is None and record["recipe"]["alpha"] == 1.0
    assert record["output"]["directory"] == "out"  # what the card names the output
    assert (out / chart.FILENAME).read_bytes().startswith(b"\x89PNG")


class _Publisher:
    """What the stages ask of a publisher: its repo, its Hub, the shards it was handed."""

    repo_id = "me/merged"

    class hub:
        endpoint = "http://hub.test"

    def __init__(self):
        self.handed = []

    def upload_shard(self, shard, *, delete=False):
        self.handed.append((shard.plan.filename, delete, shard.path.is_file()))

    def uploaded_ids(self):
        return {name: [f"sha256:{'0' * 63}{i}"] for i, (name, _, _) in enumerate(self.handed)}


def test_each_shard_goes_to_the_publisher_as_written_and_the_record_names_its_upload(tmp_path):
    trio = make_trio(tmp_path / "in", max_shard_size=60_000)
    sources = _sources(trio)
    publisher = _Publisher()
    plan = preflight(sources, Recipe(shard_size=60_000))
    with stage(plan, sources, tmp_path / "out", QUIET) as staged:
        upload_while_writing(staged, publisher, keep=True)
        files = result_files(
            staged.result(), CardSettings(target="t", tags=("x",)), publisher=publisher
        )
        shards = [s.filename for s in staged.shards]
        index_bytes = (staged.directory / "model.safetensors.index.json").read_bytes()
    assert [(name, delete) for name, delete, _ in publisher.handed] == [
        (name, False) for name in shards
    ]
    assert all(exists for _, _, exists in publisher.handed)
    record = json.loads(files["paramdelta.json"])
    assert record["target"] == "t" and record["output"]["repo"] == "me/merged"
    index = record["output"]["files"].pop("model.safetensors.index.json")
    assert index == content_ids.of_bytes(index_bytes, "model.safetensors.index.json")
    assert record["output"]["files"] == publisher.uploaded_ids()
    assert "\n# me/merged\n" in files["README.md"].decode()
    assert "- x" in files["README.md"].decode()
    # Bound for the Hub: the local inputs by their folders' names, no path of this machine.
    assert [c["path"] for c in record["checkpoints"]] == ["base", "post", "new_base"]
    assert str(tmp_path) not in (files["README.md"] + files["paramdelta.json"]).decode()


def test_without_keep_each_shard_is_handed_over_to_be_deleted(tmp_path):
    trio = make_trio(tmp_path / "in", max_shard_size=60_000)
    sources = _sources(trio)
    publisher = _Publisher()
    with stage(preflight(sources, Recipe(shard_size=60_000)), sources, tmp_path / "o", QUIET) as s:
        upload_while_writing(s, publisher, keep=False)
    assert publisher.handed and all(delete for _, delete, _ in publisher.handed)
