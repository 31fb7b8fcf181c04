"""Checkpoint specs -> `Source`s: a local directory, or a Hub repo pinned to one commit.

A spec is a directory path, or ``org/name[@revision]`` (branch, tag or commit
sha; default main). A spec that can only be a path (it starts with ./, ../, / or
~, or has more than one /) and is not a directory is "no such directory", never
a Hub lookup; one that could be either (``org/name`` where ./org exists) goes to
the Hub, and if the Hub has no such repo either, the error says both.

A Hub revision is resolved to its commit sha once, here, and every later read
names that sha, so a push to the source repo during a merge cannot mix two
revisions.

Remote checkpoints are first opened with reads of config.json, the index and
the safetensors headers only (the preflight): one request per shard for its
first 100 kB, which holds the header of any ordinary checkpoint, all shards at
once. Then either `download_inputs` fetches the weight files into the Hugging
Face cache and reads them locally, once checked against the Hub's listing (the
default: a persistent runner keeps base and post cached), or the engine keeps
reading byte ranges straight from the Hub (``--stream``: no input is stored,
disk holds only the output): Xet-backed files through hf_xet download streams
(no `/resolve/` request per range: the Hub's "resolvers" quota is spent on the
preflight only), others by HTTP ranges.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from paramdelta.engine.checkpoint import LocalSource, Provenance, Source
from paramdelta.engine.merge_plan import MergePlan
from paramdelta.errors import CheckpointError, NotFoundError, UsageError
from paramdelta.hub.cache import checked_snapshot
from paramdelta.hub.client import Hub, RepoFiles
from paramdelta.hub.xet import XetReader
from paramdelta.repo_ids import parse_spec
from paramdelta.tokens import hub_token

HUB_READ_SIZE = 16 * 2**20  # bytes per range request: large enough to amortise a round trip
HUB_PARALLEL_READS = 8
HEAD_BYTES = 100_000  # what huggingface_hub's get_safetensors_metadata reads first, too


def provenance(repo: RepoFiles) -> Provenance:
    """A Hub repo at its commit, as the lineage records it."""
    return Provenance(
        repo=repo.repo_id,
        revision=repo.revision,
        sha=repo.sha,
        content=repo.content,
        card_data=repo.card_data,
    )


class HubSource:
    """A Hub repo at one commit, read through Xet streams or HTTP Range requests."""

    read_size = HUB_READ_SIZE
    parallel_reads = HUB_PARALLEL_READS

    directory = None  # it reads no local folder

    def __init__(self, hub: Hub, repo: RepoFiles) -> None:
        self.hub = hub
        self.repo = repo
        self.label = f"{repo.repo_id}@{repo.sha[:7]}"
        self.provenance = provenance(repo)
        self._lock = threading.Lock()
        self._heads: dict[str, Future[bytes]] = {}
        self._xet: XetReader | None = None

    def local(self, paths: Sequence[str]) -> Source:
        """These files fetched into the Hugging Face cache at the pinned commit, each
        checked against the Hub's listing first (`paramdelta.hub.cache`)."""
        repo, hub = self.repo, self.hub

        def download(which: Iterable[str]) -> Path:
            return hub.download(repo.repo_id, repo.sha, sorted(which))

        checked = checked_snapshot(repo, download(paths), list(paths), download)
        checked.provenance = self.provenance  # a cached copy is still the Hub repo's
        return checked

    def list_files(self) -> list[str]:
        return sorted(self.repo.sizes)

    def size(self, path: str) -> int:
        try:
            return self.repo.sizes[path]
        except KeyError:
            raise CheckpointError(f"{self.label}: no file {path!r}") from None

    def prefetch(self, paths: Sequence[str]) -> None:
        """Read the first bytes (the header) of each safetensors file, all at once."""
        todo = [p for p in paths if p not in self._heads]
        if not todo:
            return
        with ThreadPoolExecutor(min(len(todo), HUB_PARALLEL_READS)) as pool:
            for path in todo:
                self._head(path, pool)
        for path in todo:
            self._heads[path].result()  # errors surface here, in the preflight

    def _head(self, path: str, pool: ThreadPoolExecutor | None = None) -> Future[bytes]:
        """The file's first HEAD_BYTES (or all of it), read once: in ``pool`` if given."""
        with self._lock:
            head = self._heads.get(path)
            if head is not None:
                return head
            head = self._heads[path] = Future()

        def fetch() -> None:
            length = min(self.size(path), HEAD_BYTES)
            try:
                head.set_result(self.hub.read(self.repo.repo_id, self.repo.sha, path, 0, length))
            except BaseException as e:
                head.set_exception(e)

        if pool is None:
            fetch()
        else:
            pool.submit(fetch)
        return head

    def read(self, path: str, offset: int, length: int) -> bytes:
        if path.endswith(".safetensors") and offset + length <= HEAD_BYTES:
            head = self._head(path).result()
            if offset + length <= len(head):
                return head[offset : offset + length]
        return self.hub.read(self.repo.repo_id, self.repo.sha, path, offset, length)

    def read_into(self, path: str, offset: int, view: memoryview) -> None:
        reader = self._xet_reader()
        if reader.has(path):
            self.hub.read_xet(reader, path, self.size(path), offset, view)
        else:
            self.hub.read_into(self.repo.repo_id, self.repo.sha, path, offset, view)

    def _xet_reader(self) -> XetReader:
        with self._lock:
            if self._xet is None:
                self._xet = self.hub.xet_reader(self.repo.repo_id, self.repo.sha)
            return self._xet

    def close(self) -> None:
        with self._lock:
            if self._xet is not None:
                self._xet.close()


PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def open_source(spec: str, role: str, hub_factory: HubFactory, option: str | None = None) -> Source:
    """The checkpoint ``spec`` names, a folder or a Hub repo; errors name ``option`` (by
    default the role's option, ``--post``)."""
    option = option or f"--{role.replace('_', '-')}"
    path = Path(spec).expanduser()
    if path.is_dir():
        return LocalSource(path, str(path))
    if spec.startswith(PATH_PREFIXES) or spec.count("/") > 1:
        raise UsageError(f"{option} {spec}: no such directory{_nearest(path)}")
    try:
        repo_id, revision = parse_spec(spec)
    except UsageError as e:
        raise UsageError(f"{option} {e}") from None
    hub = hub_factory()
    try:
        return HubSource(hub, hub.repo_files(repo_id, revision))
    except NotFoundError as e:
        owner = Path(repo_id.partition("/")[0])
        if owner.is_dir():  # a typo in a local path, most likely
            raise UsageError(
                f"{option} {spec}: no such directory{_nearest(path)}, and no Hub repo {repo_id}"
            ) from None
        if close := _similar_repos(hub, repo_id):  # a typo in a repo id
            raise NotFoundError(f"{e}; did you mean {' or '.join(close)}?") from None
        raise


def _similar_repos(hub: Hub, repo_id: str) -> list[str]:
    """Up to 3 repos of ``repo_id``'s author with a close name (case aside)."""
    author, _, name = repo_id.partition("/")
    names = {other.partition("/")[2].lower(): other for other in hub.author_repos(author)}
    return [names[n] for n in difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.6)]


def _nearest(path: Path) -> str:
    """The closest directories where the path stops existing (for a typo), if any."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return ""
    names = sorted(p.name for p in parent.iterdir() if p.is_dir())
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(str(parent / n) for n in close)}?)" if close else ""


# What loading a checkpoint with transformers reads: configs, weights, tokenizer files.
LOADED_SUFFIXES = (".json", ".safetensors", ".jinja", ".model", ".txt", ".tiktoken")


def loadable(source: Source) -> Source:
    """A checkpoint as transformers loads it from a local folder: the folder itself, or a
    Hub repo's top-level configs, weights and tokenizer files, fetched and checked."""
    files = source.list_files()
    return source.local([f for f in files if "/" not in f and f.endswith(LOADED_SUFFIXES)])


class HubFactory:
    """Creates the Hub client on first use: local-only merges never need a token."""

    def __init__(self, token_file: str | None = None) -> None:
        self.token_file = token_file
        self._hub: Hub | None = None

    def __call__(self) -> Hub:
        if self._hub is None:
            self._hub = Hub(token=hub_token(self.token_file))
        return self._hub


@contextmanager
def open_sources(
    hub_factory: HubFactory | None = None,
    options: Mapping[str, str] | None = None,
    /,
    **specs: str,
) -> Iterator[dict[str, Source]]:
    """Each spec opened by role; ``options``: role -> how errors name it, where that is not
    the role's own option (a ``--delta``'s)."""
    factory = hub_factory or HubFactory()
    sources: dict[str, Source] = {}
    try:
        for role, spec in specs.items():
            sources[role] = open_source(spec, role, factory, (options or {}).get(role))
        yield sources
    finally:
        for source in sources.values():
            source.close()


def download_inputs(
    plan: MergePlan,
    sources: dict[str, Source],
    read: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Source]:
    """Each source with the files the merge reads on local disk (`Source.local`): a Hub
    repo's fetched into the Hugging Face cache, and checked against the Hub's listing
    before they are used (see `paramdelta.hub.cache`): another job may have tampered
    with them.

    Each snapshot also gets its config.json and index (`MergePlan.read` names them), so
    that it opens as a checkpoint on its own (the pre-publish check loads the post model
    and new base). ``read``: per role, the files to fetch instead of all that the plan
    reads (a fan-out leg's, `paramdelta.engine.legs.files_read`).
    """
    read = plan.read if read is None else read
    local: dict[str, Source] = {}
    try:
        for role, source in sources.items():
            local[role] = source.local(read.get(role, []))
    except BaseException:
        for done in local.values():
            if done not in sources.values():
                done.close()
        raise
    return local
