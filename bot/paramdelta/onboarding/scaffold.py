"""What `paramdelta init` writes: a watchlist for one target and the scheduled workflow.

The watchlist is built from three checkpoint specs (the new base may be a
family, ``author/pattern`` with a glob), then checked by the watchlist's own
rules before anything is written. The workflow is the example this project
runs (shipped as templates/workflow.yml, the same file as
.github/workflows/paramdelta.yml) with the action pinned to this release and
the merge job's runner labels as asked. With ``legs`` above 1 the target is
merged in that many legs, and the workflow is the fan-out variant
(templates/workflow-fan-out.yml, the same file as
.github/workflows/paramdelta-fan-out.yml): legs on hosted runners, the finish
job on the GPU runner (docs/fan-out.md).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from paramdelta import PROJECT_URL, __version__
from paramdelta.errors import UsageError, local_io
from paramdelta.pipeline.watchlist import Family, Problem, RepoRef, Target, check
from paramdelta.repo_ids import is_repo_id, parse_spec

WORKFLOW_RESOURCE = "templates/workflow.yml"
FAN_OUT_RESOURCE = "templates/workflow-fan-out.yml"
WATCHLIST_FILE = "watchlist.yaml"
WORKFLOW_FILE = ".github/workflows/paramdelta.yml"
GLOB = re.compile(r"[*?\[]")
# What may go into the workflow unquoted: runner labels, and an action reference with an
# optional trailing comment (`owner/repo@sha # v1`).
LABEL = re.compile(r"[A-Za-z0-9][\w.-]*")
ACTION_REF = re.compile(r"[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[\w./-]+(?: # [\w .-]*)?")
# What the example workflow says that only makes sense in this repository.
_SELF_USES = re.compile(r"uses: \./ # zizmor: ignore\[self-repository\][^\n]*")
_HEADER_END = "\nname: paramdelta"
_MERGE_RUNNER = "    runs-on: [self-hosted, linux, gpu]\n"


def new_base_ref(spec: str) -> RepoRef | Family:
    """``org/name[@rev]``, or a family ``author/pattern[@rev]`` when the name has a glob."""
    author, _, rest = spec.partition("/")
    pattern, _, revision = rest.partition("@")
    if GLOB.search(pattern):
        if not is_repo_id(f"{author}/x") or "/" in pattern:
            raise UsageError(f"NEW_BASE {spec!r}: a family is author/pattern, like Qwen/Qwen2*-7B")
        return Family(author, pattern, revision or "main")
    return _ref(spec, "NEW_BASE")


def _ref(spec: str, what: str) -> RepoRef:
    try:
        return RepoRef(*parse_spec(spec))
    except UsageError:
        raise UsageError(
            f"{what} {spec!r}: expected a Hub repo id like org/name[@revision]"
        ) from None


def target_name(new_base: RepoRef | Family) -> str:
    """A target name from the new base: 'Llama-3.1-8B' -> 'llama-3.1-8b'."""
    name = new_base.repo.partition("/")[2] if isinstance(new_base, RepoRef) else new_base.pattern
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.") or "target"


@dataclass(frozen=True)
class Plan:
    """The files `init` will write: their paths (relative) and contents."""

    target: Target
    files: dict[str, str]
    warnings: list[Problem]


def watchlist_text(
    name: str,
    base: RepoRef,
    post: RepoRef,
    new_base: RepoRef | Family,
    output: str,
    publish: str,
    legs: int = 1,
) -> str:
    # json.dumps quotes every value: a YAML double-quoted scalar, whatever it holds.
    def q(value: str) -> str:
        return json.dumps(value)

    if isinstance(new_base, Family):
        follow = "    # follows a family: the newest repo matching the pattern is the new base\n"
        new = f"{{author: {q(new_base.author)}, pattern: {q(new_base.pattern)}"
    else:
        follow = "    # follows a branch: each new commit that changes a file the merge reads\n"
        new = f"{{repo: {q(new_base.repo)}"
    new += f", revision: {q(new_base.revision)}}}"
    return (
        "# yaml-language-server: $schema="
        f"{PROJECT_URL}/raw/v{__version__}/bot/paramdelta/schemas/watchlist.schema.json\n"
        "# Written by `paramdelta init`. Check it with: paramdelta watchlist validate\n"
        "version: 1\n"
        "targets:\n"
        f"  - name: {q(name)}\n"
        f"    base: {q(str(base))}\n"
        f"    post: {q(str(post))}\n"
        f"{follow}"
        f"    new_base: {new}\n"
        f"    output: {q(output)}\n"
        f"    publish: {q(publish)}  # commit, or pr: a Hub pull request to review\n"
        + (
            f"    legs: {legs}  # fan-out: {legs} runners each merge a slice, one commit\n"
            * (legs > 1)
        )
    )


def workflow_text(action: str, runner: tuple[str, ...], *, fan_out: bool = False) -> str:
    """The example workflow, for another repository: the action pinned, the GPU runner (of
    the merge job, and of the fan-out variant's finish job) labelled."""
    resource = FAN_OUT_RESOURCE if fan_out else WORKFLOW_RESOURCE
    example = resources.files("paramdelta").joinpath(resource).read_text()
    body = example[example.index(_HEADER_END) :]
    if _MERGE_RUNNER not in body:  # the example changed shape: this must be updated with it
        raise AssertionError(f"{resource}: no merge job runner line to set")
    body = body.replace(_MERGE_RUNNER, f"    runs-on: [{', '.join(runner)}]\n")
    header = (
        "# Written by `paramdelta init` from paramdelta-bot's example workflow: plan on a hosted\n"
        "# runner (cheap, no weights), merge each pending target on a self-hosted GPU runner,\n"
        "# then report in the job summary and in one issue per failing target."
    )
    if fan_out:
        header = (
            "# Written by `paramdelta init` from paramdelta-bot's fan-out workflow: plan on a\n"
            "# hosted runner; the legs of a target with `legs: N` on hosted runners, each merging\n"
            "# a slice of the shards into a staging branch; one finish job on the GPU runner\n"
            "# that checks and publishes it all in one commit; then report (docs/fan-out.md)."
        )
    if not is_pinned(action):
        header += (
            "\n# Pin the action to the full commit sha of its tag: <owner>/<repo>@<sha> # <tag>"
        )
    return header + _SELF_USES.sub(f"uses: {action}", body)


def is_pinned(action: str) -> bool:
    """Whether an action reference names a full commit sha (a tag can be moved)."""
    return re.search(r"@[0-9a-f]{40}(\s|$)", action) is not None


def plan_files(
    base: str,
    post: str,
    new_base: str,
    *,
    output: str,
    name: str | None = None,
    publish: str,
    action: str,
    runner: tuple[str, ...],
    legs: int = 1,
) -> Plan:
    """Build and validate the watchlist (its rules, its warnings) and the workflow."""
    if not runner or not all(LABEL.fullmatch(label) for label in runner):
        raise UsageError(f"--runner {','.join(runner)!r}: expected labels like self-hosted,gpu")
    if not ACTION_REF.fullmatch(action):
        raise UsageError(f"--action {action!r}: expected owner/repo@ref, like owner/repo@<sha>")
    refs = (_ref(base, "BASE"), _ref(post, "POST"), new_base_ref(new_base))
    if legs < 1:
        raise UsageError(f"--legs {legs}: must be at least 1")
    text = watchlist_text(
        target_name(refs[2]) if name is None else name, *refs, output, publish, legs
    )
    with tempfile.TemporaryDirectory(prefix="paramdelta-init-") as tmp:
        path = Path(tmp) / WATCHLIST_FILE
        path.write_text(text)
        watchlist, problems = check(path)
    if watchlist is None:  # what was given does not make a valid target: say which part
        error = next(p for p in problems if not p.warning)
        option = _OPTIONS.get(error.field.rpartition(".")[2], error.field)
        raise UsageError(f"{option}: {error.message}")
    files = {WATCHLIST_FILE: text, WORKFLOW_FILE: workflow_text(action, runner, fan_out=legs > 1)}
    return Plan(watchlist.targets[0], files, [p._replace(file=WATCHLIST_FILE) for p in problems])


_OPTIONS = {"output": "--output", "name": "--name", "publish": "--publish"}


def write(directory: Path, files: dict[str, str], *, force: bool) -> list[Path]:
    """Write the files under ``directory``; an existing one is refused unless ``force``."""
    paths = [directory / relpath for relpath in files]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]}: already exists (pass --force to replace it)")
    for path, text in zip(paths, files.values(), strict=True):
        with local_io(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return paths
