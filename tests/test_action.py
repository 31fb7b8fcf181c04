"""The real action.yml end to end, run the way GitHub runs the example workflow.

.github/workflows/paramdelta.yml has three jobs: plan, one merge leg per entry
of `strategy.matrix.include: ${{ fromJSON(needs.plan.outputs.pending) }}`, and
a report job that downloads every leg's result artifact. Each job here runs
the root action.yml with `run_composite_action` and the installed `paramdelta`
(PARAMDELTA_ACTION_SKIP_INSTALL), in its own fresh checkout, against the
loopback fake Hub and a fake GitHub, on CPU. Three workflow runs tell one
story: a broken target gets an issue, a rerun comments on it, a fix closes it.
Every job starts a `paramdelta` process (a few seconds each: it imports torch),
so the story is one test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load as load_safetensors

from doubles.actions import ActionRun, run_composite_action
from doubles.github import FakeGitHub
from paramdelta.testing.checkpoints import load_tensors, mismatched_tensors, reference_merge
from paramdelta.testing.hub import FakeHub
from paramdelta.testing.seed import publish_folder

pytestmark = pytest.mark.slow  # the action runs paramdelta in subprocesses

ROOT = Path(__file__).resolve().parents[1]  # action.yml and the workflow live here
VENV_BIN = str(Path(sys.executable).parent)  # where the installed `paramdelta` is
GITHUB_TOKEN = "ghs_action-e2e-github-token"
REPO = "acme/models"  # the repository the workflow runs in
SERVER = "https://github.com"
MISSING_BASE = "nobody/missing"
MISSING = f"{MISSING_BASE}@main: repository not found (or private, and the token cannot see it)"
BASES = {"good": "org/base", "broken": MISSING_BASE}
OUTPUTS = {"good": "acme/good-ParamDelta", "broken": "acme/broken-ParamDelta"}
WATCHLIST = "version: 1\ntargets:\n" + "".join(
    f"  - name: {name}\n"
    f"    base: {BASES[name]}\n"
    "    post: org/post\n"
    "    new_base: org/new-base\n"
    f"    output: {OUTPUTS[name]}\n"
    "    publish: commit\n"
    for name in ("good", "broken")
)
# What a merge commits besides the weights, and the checkpoint each file is copied from.
DONORS = {
    "LICENSE": "new_base",
    "chat_template.jinja": "post",
    "config.json": "new_base",
    "generation_config.json": "post",
    "tokenizer.json": "post",
    "tokenizer_config.json": "post",
}
PUBLISHED_FILES = sorted(
    [*DONORS, "README.md", "model.safetensors", "paramdelta.json", "paramdelta-delta.png"]
)


@dataclass
class WorkflowRun:
    """One run of the example workflow: what each of its jobs did."""

    run_id: int
    plan: ActionRun
    matrix: list[dict[str, Any]]  # the plan's `pending`, each entry one leg's `matrix`
    legs: dict[str, ActionRun]  # matrix.target -> the merge leg's action
    results: Path  # the report job's results/, after download-artifact
    report: ActionRun

    @property
    def url(self) -> str:
        return f"{SERVER}/{REPO}/actions/runs/{self.run_id}"

    def actions(self) -> list[ActionRun]:
        return [self.plan, *self.legs.values(), self.report]

    def result(self, target: str) -> dict[str, Any]:
        """The one record of a leg's downloaded result artifact, else what the plan's says."""
        path = self.results / f"paramdelta-result-{target}" / "result.json"
        if path.exists():
            [record] = json.loads(path.read_text(encoding="utf-8"))["results"]
            return record
        plan = self.results / "paramdelta-result-plan" / "plan.json"
        [record] = [
            r
            for r in json.loads(plan.read_text(encoding="utf-8"))["results"]
            if r["target"] == target
        ]
        return record


class Repository:
    """The repository that holds the workflow: its secrets, runner environment and jobs."""

    def __init__(self, root: Path, hub: FakeHub, github: FakeGitHub, hf_token: str) -> None:
        self.root = root
        self.hub = hub
        self.github = github
        self.hf_token = hf_token  # secrets.HF_TOKEN
        self.hf_cache = root / "hf-cache"  # the GPU runner's persistent HF_HOME

    def run_workflow(self, run_id: int) -> WorkflowRun:
        """The workflow on a schedule: no dispatch inputs (target "", dry-run false)."""
        plan = self.plan(run_id)
        matrix: list[dict[str, Any]] = []
        if plan.outputs["pending-count"] != "0":  # the merge job's `if:`
            matrix = json.loads(plan.outputs["pending"])
        artifacts = self.root / f"run-{run_id}" / "artifacts"
        # upload-artifact: the plan job's results/ (what is up to date, and what is planned)
        shutil.copytree(
            self.root / f"run-{run_id}" / "plan" / "results", artifacts / "paramdelta-result-plan"
        )
        legs = {}
        for entry in matrix:  # fail-fast: false, so every leg runs
            legs[entry["target"]] = self.merge(run_id, entry)
            # upload-artifact (if: always()): the leg's results/, one artifact per leg
            uploaded = self.root / f"run-{run_id}" / f"merge-{entry['target']}" / "results"
            if uploaded.is_dir():
                shutil.copytree(uploaded, artifacts / f"paramdelta-result-{entry['target']}")
        # The report job: mkdir -p results, then download-artifact with a pattern, which puts
        # each artifact in a directory of its own name.
        workspace = self._checkout(run_id, "report")
        (workspace / "results").mkdir()
        for artifact in sorted(artifacts.glob("paramdelta-result-*")):
            shutil.copytree(artifact, workspace / "results" / artifact.name)
        report = self._job(
            run_id,
            "report",
            {"command": "report", "results": "results", "github-token": GITHUB_TOKEN},
        )
        return WorkflowRun(run_id, plan, matrix, legs, workspace / "results", report)

    def plan(self, run_id: int) -> ActionRun:
        inputs = {"command": "plan", "watchlist": "watchlist.yaml", "target": ""}
        return self._job(run_id, "plan", {**inputs, "hf-token": self.hf_token})

    def merge(self, run_id: int, matrix: dict[str, Any]) -> ActionRun:
        """One leg, with the `with:` of the workflow's merge step (`results` left default)."""
        return self._job(
            run_id,
            f"merge-{matrix['target']}",
            {
                "command": "run",
                "watchlist": "watchlist.yaml",
                "target": matrix["target"],
                "dry-run": "false",
                "device": "cpu",  # the workflow says cuda; these tests have no GPU
                "hf-token": self.hf_token,
                "hf-oidc-resource": "" if self.hf_token else matrix["output_repo"] or "",
            },
            HF_HOME=str(self.hf_cache),
        )

    def _checkout(self, run_id: int, job: str) -> Path:
        workspace = self.root / f"run-{run_id}" / job
        if not workspace.exists():
            workspace.mkdir(parents=True)
            (workspace / "watchlist.yaml").write_text(WATCHLIST, encoding="utf-8")
        return workspace

    def _job(self, run_id: int, job: str, inputs: dict[str, str], **env: str) -> ActionRun:
        workspace = self._checkout(run_id, job)
        runner_temp = workspace.parent / f"{job}-temp"
        runner_temp.mkdir()
        return run_composite_action(
            ROOT,
            inputs,
            env={
                # What a runner sets for every job (run_composite_action adds GITHUB_ACTIONS,
                # RUNNER_TEMP, ...), pinned so that a CI run of these tests does not leak in.
                "GITHUB_REPOSITORY": REPO,
                "GITHUB_SERVER_URL": SERVER,
                "GITHUB_API_URL": self.github.url,
                "GITHUB_WORKFLOW": "paramdelta",
                "GITHUB_JOB": job.partition("-")[0],
                "GITHUB_RUN_ID": str(run_id),
                "GITHUB_RUN_ATTEMPT": "1",
                "GITHUB_EVENT_NAME": "schedule",
                "HF_ENDPOINT": self.hub.url,
                "HF_HOME": str(workspace.parent / f"{job}-hf-home"),
                "PARAMDELTA_ACTION_SKIP_INSTALL": "true",
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                **env,
            },
            workdir=workspace,
            runner_temp=runner_temp,
        )


@pytest.fixture
def github():
    with FakeGitHub(token=GITHUB_TOKEN) as server:
        server.add_repo(REPO)
        yield server


@pytest.fixture
def repository(hub_trio, fake_hub, hub_token, github, tmp_path, monkeypatch) -> Repository:
    # Tokens reach the jobs only as action inputs, as secrets do on GitHub.
    monkeypatch.delenv("HF_TOKEN")
    return Repository(tmp_path / "workflow", fake_hub, github, hub_token)


# --- expected values --------------------------------------------------------------------------


def pending_entry(hub: FakeHub, target: str) -> dict[str, Any]:
    pins = {"base": BASES[target], "post": "org/post", "new_base": "org/new-base"}
    return {
        "target": target,
        "status": "pending",
        "output_repo": OUTPUTS[target],
        "publish": "commit",
        "reasons": ["no lineage record in the output repo"],
        **{role: f"{repo}@{hub.head(repo)}" for role, repo in pins.items()},
        "error": None,
    }


BROKEN_ENTRY = {
    "target": "broken",
    "status": "error",
    "output_repo": None,
    "publish": "commit",
    "reasons": [MISSING],
    "error": MISSING,
}


def plan_summary(*rows: str) -> str:
    head = ["### ParamΔ plan", "", "| target | status | new base | output | why |"]
    return "\n".join([*head, "|---|---|---|---|---|", *rows]) + "\n"


def plan_row(hub: FakeHub, target: str, status: str, why: str = "") -> str:
    new_base = f"`org/new-base@{hub.head('org/new-base')[:7]}`"
    return f"| {target} | {status} | {new_base} | {OUTPUTS[target]} | {why} |"


BROKEN_PLAN_ROW = f"| broken | error | - | - | {MISSING} |"
NO_RECORD = "no lineage record in the output repo"


def published_result(hub: FakeHub, target: str) -> dict[str, Any]:
    repo = OUTPUTS[target]
    return {
        "target": target,
        "status": "published",
        "output_repo": repo,
        "new_base_repo": "org/new-base",
        "new_base_sha": hub.head("org/new-base"),
        "url": f"{hub.url}/{repo}/commit/{hub.head(repo)}",
        "error": None,
        "exit_code": 0,
    }


FAILED_RESULT = {
    "target": "broken",
    "status": "failed",
    "output_repo": None,
    "new_base_repo": None,
    "new_base_sha": None,
    "url": None,
    "error": MISSING,
    "exit_code": 4,
}


def without_duration(record: dict[str, Any]) -> dict[str, Any]:
    """The record without what varies run to run: its duration and the check's numbers."""
    assert isinstance(record["duration_s"], float) and record["duration_s"] >= 0
    check = record.get("check")
    assert check is None or check["status"] == "passed"  # a published merge passed its check
    return {k: v for k, v in record.items() if k not in ("duration_s", "check")}


def report_summary(run: WorkflowRun, targets: list[str], counts: str) -> str:
    """The report's table, from the downloaded results (their durations vary run to run)."""
    lines = ["### ParamΔ merges", "", "| target | new base | status | link | duration |"]
    lines.append("| --- | --- | --- | --- | --- |")
    errors = []
    for target in targets:
        r = run.result(target)
        duration = f"{r['duration_s']:.1f}s"
        if r["status"] == "failed":
            lines.append(f"| {target} | - | failed (exit {r['exit_code']}) | - | {duration} |")
            errors.append(f"- **{target}**: {r['error']}")
        else:
            new_base = f"{r['new_base_repo']}@{r['new_base_sha'][:7]}"
            link = f"[commit]({r['url']})" if r["url"] else "-"
            status = r["status"].replace("-", " ")  # up-to-date: "up to date"
            lines.append(f"| {target} | {new_base} | {status} | {link} | {duration} |")
    lines.append("")
    if errors:
        lines += ["Errors:", "", *errors, ""]
    lines.append(f"{counts} [Workflow run]({run.url})")
    return "\n".join(lines) + "\n"


def failure_text(run: WorkflowRun) -> str:
    return (
        f"The ParamΔ merge of **broken** failed with exit code 4 in [this run]({run.url}):\n\n"
        f"```text\n{MISSING}\n```\n"
    )


# --- checks -----------------------------------------------------------------------------------


def printed(run: ActionRun) -> str:
    """What the runner's log shows: every step's output, less the ::add-mask:: it consumes."""
    lines = "".join(step.stdout + step.stderr for step in run.steps).splitlines()
    return "\n".join(line for line in lines if not line.startswith("::add-mask::"))


def check_plan(run: WorkflowRun, matrix: list[dict[str, Any]], summary: str) -> None:
    assert (run.plan.ok, run.plan.returncode) == (True, 0), printed(run.plan)
    assert run.plan.outputs["pending-count"] == str(len(matrix))
    assert run.matrix == matrix
    assert run.plan.step("paramdelta").summary == summary


def check_published(hub: FakeHub, local: dict[str, Path], run: WorkflowRun, target: str) -> None:
    """The leg created the target's output repo and published one right commit to it."""
    leg = run.legs[target]
    logged = (
        f"{target}: vocabulary: 256 rows in all three: 256 merged, 0 kept from the post model,"
        f" 0 dropped from the new base (vocab policy `error`: sizes must match, or the merge stops)\n{target}: left out: .gitattributes"
        " (the Hub keeps its own), README.md (replaced by the model card)\n"
    )
    assert (leg.ok, leg.returncode, leg.stderr) == (True, 0, logged), printed(leg)
    expected = published_result(hub, target)
    assert without_duration(run.result(target)) == expected
    assert [without_duration(r) for r in json.loads(leg.outputs["published"])] == [expected]
    assert leg.outputs["result-file"] == "results/result.json"  # what upload-artifact takes
    assert f"\n{target}: published ({expected['url']})\n  pre-publish check: passed in " in printed(
        leg
    )

    repo = OUTPUTS[target]
    merge, created = hub.commits(repo)
    assert (created.title, created.changed) == ("initial commit", (".gitattributes",))
    assert merge.title == f"ParamΔ: org/post onto org/new-base@{hub.head('org/new-base')[:7]}"
    assert merge.message == f"Made by paramdelta-bot for target `{target}`."
    assert merge.parents == (created.oid,)
    assert list(merge.changed) == PUBLISHED_FILES
    assert hub.list_files(repo) == [".gitattributes", *PUBLISHED_FILES]

    inputs = {role: load_tensors(path) for role, path in local.items()}
    wanted = reference_merge(inputs["base"], inputs["post"], inputs["new_base"])
    merged = load_safetensors(hub.read_file(repo, "model.safetensors"))
    assert len(merged) == len(wanted) == 21
    assert mismatched_tensors(merged, wanted) == []
    for name, role in DONORS.items():
        assert hub.read_file(repo, name) == (local[role] / name).read_bytes(), name

    pins = {"base": BASES[target], "post": "org/post", "new_base": "org/new-base"}
    record = json.loads(hub.read_file(repo, "paramdelta.json"))
    assert (record["target"], record["ci_run_url"]) == (target, run.url)
    assert [
        {k: c[k] for k in ("role", "repo", "revision", "sha")} for c in record["checkpoints"]
    ] == [
        {"role": role, "repo": name, "revision": "main", "sha": hub.head(name)}
        for role, name in pins.items()
    ]
    recipe_keys = ("alpha", "dtype", "requested_dtype", "vocab_policy", "file_donors")
    assert {k: record["recipe"][k] for k in recipe_keys} == {
        "alpha": 1.0,
        "dtype": "bfloat16",
        "requested_dtype": "auto",
        "vocab_policy": "error",
        "file_donors": DONORS,
    }
    assert record["output"] == {
        "repo": repo,
        "architecture": {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vision_config": False,
        },
        "tensors": 21,
        "bytes": sum(t.numel() * t.element_size() for t in wanted.values()),
        "shards": ["model.safetensors"],
        "files": {
            "model.safetensors": [
                f"sha256:{hashlib.sha256(hub.read_file(repo, 'model.safetensors')).hexdigest()}"
            ]
        },
    }

    card = hub.read_file(repo, "README.md").decode()
    assert card.startswith(f"---\nbase_model:\n- org/new-base\n- org/post\n- {BASES[target]}\n")
    assert f"\n# {repo}\n" in card
    assert f"in [this workflow run]({run.url})" in card
    sha, new_base = hub.head("org/new-base"), f"{hub.url}/org/new-base"
    assert (
        f"| new base | [org/new-base]({new_base}) | `main` | [`{sha[:12]}`]({new_base}/commit/{sha}) |"
        in card
    )


def check_failed(hub: FakeHub, run: WorkflowRun) -> None:
    """The broken leg fails with the Hub's exit code, yet leaves its result for the report."""
    leg = run.legs["broken"]
    step = leg.step("paramdelta")
    assert (leg.ok, leg.returncode) == (False, 4), printed(leg)
    assert (step.outcome, step.returncode) == ("failure", 4)
    assert without_duration(run.result("broken")) == FAILED_RESULT
    assert leg.outputs["published"] == "[]"
    assert leg.outputs["result-file"] == "results/result.json"
    assert printed(leg).endswith(f"\nbroken: failed ({MISSING})")
    assert not hub.repo_exists(OUTPUTS["broken"])


def check_report(run: WorkflowRun, summary: str, issue_actions: list[str]) -> None:
    report = run.report
    # A failing target is reported, not failed again.
    assert (report.ok, report.returncode, report.stderr) == (True, 0, ""), printed(report)
    assert report.outputs["summary"] == summary
    assert report.step("paramdelta").summary == summary
    assert printed(report) == (
        "paramdelta report results --watchlist watchlist.yaml --github --issues\n"
        + summary
        + "".join(f"\n{action}" for action in issue_actions)
    )


# --- the story --------------------------------------------------------------------------------


def test_the_workflow_publishes_and_keeps_one_issue_for_a_broken_target_until_fixed(
    repository, fake_hub, hub_trio, hub_token, github
):
    hub, local = fake_hub, hub_trio.local
    issue_url = f"{github.url}/{REPO}/issues/1"

    # Run 1: the good target is merged and published, the broken one gets an issue. The broken
    # target is in the matrix by design, with status error: its leg fails with the real error.
    first = repository.run_workflow(1)
    check_plan(
        first,
        [pending_entry(hub, "good"), BROKEN_ENTRY],
        plan_summary(plan_row(hub, "good", "pending", NO_RECORD), BROKEN_PLAN_ROW),
    )
    assert list(first.legs) == ["good", "broken"]
    check_published(hub, local, first, "good")
    check_failed(hub, first)
    check_report(
        first,
        report_summary(first, ["broken", "good"], "2 targets: 1 published, 1 failed."),
        [f"opened issue #1 for broken: {issue_url}"],
    )
    [issue] = github.issues(REPO)
    assert (issue.number, issue.title) == (1, "ParamΔ merge failing: broken")
    assert (issue.labels, issue.state, issue.comments) == (["paramdelta"], "open", [])
    assert issue.body == (
        "<!-- paramdelta:target=broken -->\n"
        f"{failure_text(first)}\n"
        "paramdelta-bot keeps this issue up to date: each new failure adds a comment,"
        " and the issue is closed when the target succeeds again.\n"
    )
    assert github.labels(REPO) == ["paramdelta"]
    published = hub.head(OUTPUTS["good"])

    # Run 2: the good target is up to date, so it has no leg; the broken one fails again.
    second = repository.run_workflow(2)
    check_plan(
        second,
        [BROKEN_ENTRY],
        plan_summary(plan_row(hub, "good", "up-to-date"), BROKEN_PLAN_ROW),
    )
    check_failed(hub, second)
    check_report(
        second,
        report_summary(second, ["broken", "good"], "2 targets: 1 up to date, 1 failed."),
        [f"commented on issue #1 for broken: {issue_url}"],
    )
    [issue] = github.issues(REPO)  # the same issue, no duplicate
    assert (issue.state, issue.comments) == ("open", [failure_text(second)])

    # The missing base gets published; run 3 merges the broken target and closes its issue.
    publish_folder(hub, MISSING_BASE, local["base"])
    third = repository.run_workflow(3)
    check_plan(
        third,
        [pending_entry(hub, "broken")],
        plan_summary(
            plan_row(hub, "good", "up-to-date"), plan_row(hub, "broken", "pending", NO_RECORD)
        ),
    )
    check_published(hub, local, third, "broken")
    check_report(
        third,
        report_summary(third, ["broken", "good"], "2 targets: 1 published, 1 up to date."),
        [f"closed issue #1 for broken: {issue_url}"],
    )
    [issue] = github.issues(REPO)
    assert (issue.state, issue.state_reason) == ("closed", "completed")
    assert issue.comments == [
        failure_text(second),
        f"Fixed by [this run]({third.url}): **broken** merged onto"
        f" `org/new-base@{hub.head('org/new-base')}` and published to"
        f" `{OUTPUTS['broken']}`: {third.result('broken')['url']}\n\nClosing.\n",
    ]
    assert hub.head(OUTPUTS["good"]) == published  # never merged again

    # The tokens went in as inputs, were masked before anything was printed, and show nowhere.
    runs = [first, second, third]
    for run in runs:
        jobs = [(run.plan, hub_token), *((leg, hub_token) for leg in run.legs.values())]
        for action, token in [*jobs, (run.report, GITHUB_TOKEN)]:
            assert action.masks == [token]
            assert action.step("paramdelta").stdout.startswith(f"::add-mask::{token}\n")
    written = [printed(action) for run in runs for action in run.actions()]
    written += [json.dumps(a.outputs) + "".join(a.summaries) for r in runs for a in r.actions()]
    written += [p.read_text() for run in runs for p in run.results.rglob("*") if p.is_file()]
    written += [
        hub.read_file(repo, name).decode()
        for repo in OUTPUTS.values()
        for name in ("README.md", "paramdelta.json")
    ]
    written += [text for issue in github.issues(REPO) for text in (issue.body, *issue.comments)]
    for token in (hub_token, GITHUB_TOKEN):
        assert [text for text in written if token in text] == []


def test_the_summary_output_of_run_is_the_markdown_summary(repository):
    """action.yml and docs/github-action.md: `summary` is "run, report: the Markdown summary"."""
    leg = repository.merge(1, {"target": "broken", "output_repo": None})
    assert leg.returncode == 4, printed(leg)
    markdown = leg.step("paramdelta").summary  # what the step wrote to the job summary
    assert markdown.startswith("### ParamΔ merges\n")
    assert leg.outputs["summary"] == markdown
