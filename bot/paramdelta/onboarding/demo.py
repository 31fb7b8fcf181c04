"""`paramdelta demo`: the whole cycle on this machine, no network, no accounts.

A loopback fake Hub (paramdelta.testing.hub) is seeded with three tiny
Llama-shaped checkpoints under realistic repo ids; then the real CLI runs
against it, each step in its own process exactly as a user or the GitHub
Action would run it: plan (1 pending) -> run (merge + publish) -> plan
(nothing pending) -> a README-only commit lands on the followed base -> plan
(still nothing pending: no file the merge reads changed) -> new weights land
-> plan (pending again) -> run. Finally the published weights are checked against the formula
and the lineage record against the fake Hub's commits, and the pre-publish
check's verdict and the delta report that the run recorded are shown.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paramdelta.engine.roles import ROLES
from paramdelta.errors import ParamDeltaError
from paramdelta.rendering.card import delta_rows
from paramdelta.rendering.check_report import STEP_TITLES
from paramdelta.testing.checkpoints import (
    load_tensors,
    make_trio,
    mismatched_tensors,
    perturbed,
    reference_merge,
    save_checkpoint,
)
from paramdelta.testing.hub import FakeHub
from paramdelta.testing.seed import model_readme, publish_folder

REPOS = {
    "base": "meta-llama/Meta-Llama-3-8B",
    "post": "meta-llama/Meta-Llama-3-8B-Instruct",
    "new_base": "meta-llama/Llama-3.1-8B",
}
LICENSES = {"base": "llama3", "post": "llama3", "new_base": "llama3.1"}
OUTPUT = "demo-user/Llama-3.1-8B-Instruct-ParamDelta"
TARGET = "llama-3.1-8b-instruct"
TOKEN = "hf_demo_write_token"  # noqa: S105 - the fake Hub's own; no real account is involved
WATCHLIST = f"""\
# The demo's watchlist: follow meta-llama/Llama-3.1-8B's main branch.
targets:
  - name: {TARGET}
    base: {REPOS["base"]}
    post: {REPOS["post"]}
    new_base:
      repo: {REPOS["new_base"]}
      revision: main
    output: {OUTPUT}
    tags: [demo]
"""


class DemoError(ParamDeltaError):
    """A demo step did not do what it should have."""


@dataclass
class DemoReport:
    """What the demo saw, for the person watching and for the tests."""

    workdir: Path
    hub_url: str = ""
    seeded: dict[str, str] = field(default_factory=dict)  # role -> sha
    readme_commit: str = ""
    new_base_v2: str = ""
    output_commits: list[str] = field(default_factory=list)  # newest first
    output_files: list[str] = field(default_factory=list)
    lineage: dict[str, object] = field(default_factory=dict)
    card_path: Path | None = None
    mismatched: list[str] = field(default_factory=list)
    tensors_checked: int = 0


def run_demo(workdir: Path, say: Callable[[str], None] = print) -> DemoReport:
    report = DemoReport(workdir)
    with FakeHub(data_dir=workdir / "fake-hub", token=TOKEN) as hub:
        report.hub_url = hub.url
        say(f"A loopback fake Hub is serving at {hub.url} (nothing leaves this machine).\n")
        local = make_trio(workdir / "checkpoints", max_shard_size=60_000)
        for role, repo in REPOS.items():
            report.seeded[role] = publish_folder(hub, repo, local[role], license_id=LICENSES[role])
            say(f"  seeded {repo:<40} {report.seeded[role][:12]}  (tiny {role.replace('_', ' ')})")
        watchlist = workdir / "watchlist.yaml"
        watchlist.write_text(WATCHLIST)
        env = _environment(hub.url, workdir)
        step = _Stepper(say, env, workdir)

        plan_and_run = functools.partial(_plan_and_run, step, watchlist)
        plan_and_run(
            "1. plan: the output does not exist yet, so the target is pending",
            "2. run: merge and publish weights, card and lineage in one commit",
        )
        step(
            "3. plan again: nothing changed, nothing to do",
            ["plan", "--watchlist", str(watchlist)],
            expect="0 of 1 targets pending",
        )

        report.readme_commit = hub.commit(
            REPOS["new_base"], {"README.md": model_readme(LICENSES["new_base"], "Fixed a typo")}
        )
        say(f"\n==> A README-only commit lands on {REPOS['new_base']}: {report.readme_commit[:12]}")
        step(
            "4. plan: the branch moved, but no file the merge reads changed",
            ["plan", "--watchlist", str(watchlist)],
            expect="upstream moved, content unchanged",
        )

        new_base_v2 = perturbed(load_tensors(local["new_base"]), seed=7)
        v2_dir = save_checkpoint(
            workdir / "checkpoints" / "new_base_v2",
            new_base_v2,
            json.loads((local["new_base"] / "config.json").read_text()),
            max_shard_size=60_000,
        )
        report.new_base_v2 = publish_folder(
            hub,
            REPOS["new_base"],
            v2_dir,
            license_id=LICENSES["new_base"],
            message="Update weights",
        )
        say(f"\n==> A new commit lands on {REPOS['new_base']}: {report.new_base_v2[:12]}")

        plan_and_run(
            "5. plan: new weights on the followed branch, so the target is pending again",
            "6. run: merge onto the new base and publish",
        )

        _inspect(hub, report, {**local, "new_base": v2_dir}, say)
    return report


def _plan_and_run(step: _Stepper, watchlist: Path, plan_title: str, run_title: str) -> None:
    """A pending target, planned and then merged and published."""
    step(plan_title, ["plan", "--watchlist", str(watchlist)], expect="1 of 1 targets pending")
    step(run_title, ["run", "--watchlist", str(watchlist)], expect=f"{TARGET}: published")


def _environment(hub_url: str, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GITHUB_"))}
    env.update(
        HF_ENDPOINT=hub_url,
        HF_TOKEN=TOKEN,
        HF_HOME=str(workdir / "hf-home"),  # the demo never touches your real cache
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    return env


class _Stepper:
    """Runs `paramdelta ...` as a user would, shows it, and checks the outcome."""

    def __init__(self, say: Callable[[str], None], env: dict[str, str], cwd: Path) -> None:
        self.say, self.env, self.cwd = say, env, cwd

    def __call__(self, title: str, argv: list[str], *, expect: str) -> str:
        self.say(f"\n==> {title}\n$ paramdelta {shlex.join(argv)}")
        proc = subprocess.run(
            [sys.executable, "-m", "paramdelta", *argv],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        output = (proc.stdout + proc.stderr).rstrip()
        self.say("\n".join(f"  {line}" for line in output.splitlines()))
        if proc.returncode != 0 or expect not in proc.stdout:
            raise DemoError(
                f"demo step failed: paramdelta {argv[0]} exited {proc.returncode},"
                f" expected {expect!r} in its output"
            )
        return proc.stdout


def _inspect(
    hub: FakeHub, report: DemoReport, inputs: dict[str, Path], say: Callable[[str], None]
) -> None:
    """Show what was published, and check it against the fake Hub and the formula."""
    report.output_commits = [c.oid for c in hub.commits(OUTPUT)]
    report.output_files = hub.list_files(OUTPUT)
    say(f"\n==> {OUTPUT} now has {len(report.output_commits)} commits; its files:")
    say("\n".join(f"  {name}" for name in report.output_files))
    weights = [f for f in report.output_files if hub.xet_hash(OUTPUT, f)]
    say(
        f"Uploaded through Xet storage (hf_xet): {', '.join(weights) or 'nothing'};"
        f" legacy LFS bytes: {hub.lfs_bytes_uploaded}"
    )
    if not weights or hub.lfs_bytes_uploaded:
        raise DemoError("demo: the weights did not go through Xet storage")

    record = json.loads(hub.read_file(OUTPUT, "paramdelta.json"))
    report.lineage = record
    say("\nLineage (paramdelta.json), checked against the fake Hub's commits:")
    say(f"  {'role':<9} {'repo':<40} {'commit':<14} on the Hub")
    for checkpoint in record["checkpoints"]:
        head = hub.head(checkpoint["repo"])
        mark = "yes" if checkpoint["sha"] == head else f"NO (Hub has {head[:12]})"
        role, repo, sha = checkpoint["role"], checkpoint["repo"], checkpoint["sha"]
        say(f"  {role:<9} {repo:<40} {sha[:12]:<14} {mark}")
        if checkpoint["sha"] != head:
            raise DemoError(
                f"demo: lineage names {checkpoint['sha']} for {checkpoint['repo']}, the Hub {head}"
            )

    _show_check_and_delta(record, say)

    published = report.workdir / "published"
    published.mkdir(exist_ok=True)
    for name in report.output_files:
        (published / name).write_bytes(hub.read_file(OUTPUT, name))
    report.card_path = published / "README.md"

    expected = reference_merge(*(load_tensors(inputs[role]) for role in ROLES))
    report.mismatched = mismatched_tensors(load_tensors(published), expected)
    report.tensors_checked = len(expected)
    if report.mismatched:
        raise DemoError(f"demo: {len(report.mismatched)} tensors differ from the formula")
    say(
        f"Weights: all {report.tensors_checked} tensors equal"
        " (post - base + new_base) in float32, rounded once to bfloat16, bit for bit."
    )


def _show_check_and_delta(record: dict[str, object], say: Callable[[str], None]) -> None:
    """The pre-publish check and the delta table, as paramdelta.json records them."""
    check = record.get("check")
    assert isinstance(check, dict)
    if check["status"] == "not-checked":
        say(f"\nPre-publish check: not checked: {check['reason']}")
    else:
        say(f"\nPre-publish check, before the commit ({check['seconds']} s on {check['device']}):")
        for step in check["steps"]:
            mark = "pass" if step["passed"] else "FAIL"
            say(f"  {mark}  {STEP_TITLES[step['step']]}: {step['detail']}")
    table = delta_rows(record.get("delta"))  # type: ignore[arg-type]
    assert table is not None
    say("\nDelta report, measured in the merge pass (also in the card, with a per-layer chart):")
    header = ("layer", "tensors", "|post-base|", "|new-base|", "cosine", "NaN/Inf")
    say("  {:<11} {:>7} {:>12} {:>12} {:>8} {:>7}".format(*header))
    for row in [table["overall"], *table["layers"]]:
        say(
            f"  {row['layer']:<11} {row['tensors']:>7} {row['post_delta']:>12}"
            f" {row['base_update']:>12} {row['cosine']:>8} {row['nonfinite']:>7}"
        )


def default_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="paramdelta-demo-"))
