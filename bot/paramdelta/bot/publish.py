"""The one way a merge reaches the Hub: `merge --push-to`, `publish` and `run` all go through here.

Each shard is uploaded as soon as the writer finishes it, and everything is
committed at the end in one commit (see `paramdelta.hub.publisher`). Without a
local output directory the merge happens in a scratch directory and each shard
is deleted once uploaded, so disk holds about one shard uploading and one being
written. A scratch directory that a killed run left is removed by the next one.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from paramdelta.engine.checkpoint import Source
from paramdelta.engine.layout import MergePlan
from paramdelta.engine.merge import MergeResult, Prepare, merge_to_dir
from paramdelta.engine.options import MergeOptions
from paramdelta.engine.workdirs import OwnedDir, sweep
from paramdelta.hub.publisher import Publisher, PublishResult

ExtraFiles = Callable[[MergeResult], Mapping[str, bytes]]
SCRATCH_PREFIX = "paramdelta-scratch-"


def merge_and_publish(
    publisher: Publisher,
    sources: dict[str, Source],
    options: MergeOptions,
    *,
    plan: MergePlan,
    out_dir: Path | None = None,
    overwrite: bool = False,
    prepare: Prepare | None = None,
    extra_files: ExtraFiles | None = None,
    already_published: Callable[[], PublishResult | None] | None = None,
) -> tuple[MergeResult, PublishResult]:
    """Merge while uploading each finished shard; then one commit with everything.

    ``extra_files`` makes the files that depend on the merge's result (card,
    lineage) once it is known; ``out_dir`` keeps a local copy of the output.
    ``already_published``, asked right before the commit, may say that the same
    merge was published meanwhile (an open pull request): then nothing is committed.
    """
    with scratch_dir() as scratch, publisher:
        merged = merge_to_dir(
            sources,
            out_dir or scratch / "merged",
            options,
            overwrite=overwrite,
            plan=plan,
            prepare=prepare,
            on_shard_written=functools.partial(publisher.upload_shard, delete=out_dir is None),
        )
        extra = extra_files(merged) if extra_files is not None else None
        done = already_published() if already_published is not None else None
        published = done or publisher.finish(merged.out_dir, extra)
    return merged, published


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A scratch directory in the temp dir, removed after; a killed run's are swept first."""
    parent = Path(tempfile.gettempdir())
    sweep(parent, SCRATCH_PREFIX)
    work = OwnedDir(parent, SCRATCH_PREFIX)
    try:
        yield work.path
    finally:
        shutil.rmtree(work.path, ignore_errors=True)
        work.release()


def publish_directory(
    publisher: Publisher, directory: Path, extra_files: Mapping[str, bytes] | None = None
) -> PublishResult:
    """Commit an already merged directory, in one commit."""
    with publisher:
        return publisher.finish(directory, extra_files)
