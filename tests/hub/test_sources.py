import pytest

from paramdelta.engine.checkpoint import LocalSource
from paramdelta.engine.merge import preflight
from paramdelta.engine.options import MergeOptions
from paramdelta.errors import UsageError
from paramdelta.hub.sources import (
    HubFactory,
    HubSource,
    download_inputs,
    open_sources,
)
from paramdelta.repo_ids import parse_spec


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("org/name", ("org/name", "main")),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("o/n@" + "a" * 40, ("o/n", "a" * 40)),
    ],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["name", "org/name@", "../etc/passwd", "org/na me", "/abs/path"])
def test_parse_spec_rejects(spec):
    with pytest.raises(UsageError, match="is neither a directory nor a Hub repo id"):
        parse_spec(spec)


def test_hub_sources_are_pinned_and_local_dirs_win(hub_trio, tmp_path):
    with open_sources(
        HubFactory(), base=hub_trio.repos["base"], post=str(hub_trio.local["post"])
    ) as sources:
        base, post = sources["base"], sources["post"]
        assert isinstance(base, HubSource) and isinstance(post, LocalSource)
        assert (base.repo.repo_id, base.repo.revision) == ("org/base", "main")
        assert base.repo.sha == hub_trio.shas["base"]
        assert base.label == f"org/base@{hub_trio.shas['base'][:7]}"
        assert post.root == hub_trio.local["post"]


def test_download_fetches_only_what_the_merge_reads(hub_trio, fake_hub):
    fake_hub.commit(hub_trio.repos["post"], {"unrelated/big.bin": b"x" * 1000})
    specs = {role: hub_trio.repos[role] for role in ("base", "post", "new_base")}
    with open_sources(HubFactory(), **specs) as sources:
        plan = preflight(sources, MergeOptions())
        needed = {role: set(paths) for role, paths in plan.read.items()}
        assert needed["post"] >= {"tokenizer_config.json", "chat_template.jinja", "config.json"}
        assert "unrelated/big.bin" not in needed["post"]
        local = download_inputs(plan, sources)
    for role, source in local.items():
        assert isinstance(source, LocalSource)
        assert set(source.list_files()) == needed[role]
        # the cached snapshot of the pinned commit, under the same label
        assert source.root.name == fake_hub.head(hub_trio.repos[role])
        assert source.label == f"{hub_trio.repos[role]}@{source.root.name[:7]}"
