"""`paramdelta init BASE POST NEW_BASE --output ORG/NAME`: a watchlist and the scheduled workflow.

Checks the three repos on the Hub (unless --offline), writes watchlist.yaml
and .github/workflows/paramdelta.yml, and prints what is left to do by hand:
Hub credentials, the GPU runner, pinning the action.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from paramdelta import PROJECT_URL, __version__
from paramdelta.commands import arguments

# The action this release is, and the labels of the example workflow's GPU runner.
ACTION = f"{PROJECT_URL.removeprefix('https://github.com/')}@v{__version__}"
RUNNER = ("self-hosted", "linux", "gpu")

if TYPE_CHECKING:
    from paramdelta.hub.client import Hub
    from paramdelta.onboarding.scaffold import Plan

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="the model POST was trained from, org/name")
    parser.add_argument("post", metavar="POST", help="the post-trained (instruct) model")
    parser.add_argument(
        "new_base",
        metavar="NEW_BASE",
        help="the newer base to follow: org/name[@branch], or a family author/pattern"
        " (quoted glob, e.g. 'Qwen/Qwen2*-7B': the newest match wins)",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="REPO",
        help="the repo to publish to, org/name; may use {new_base_name} and the other"
        " placeholders of the watchlist",
    )
    parser.add_argument("--name", help="the target's name (default: from the new base's name)")
    parser.add_argument(
        "--publish",
        choices=("commit", "pr"),
        default="pr",
        help="commit to the output repo, or open a Hub pull request to review (default pr)",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(), help="the repository to write into (default: here)"
    )
    parser.add_argument(
        "--runner",
        default=",".join(RUNNER),
        help=f"the merge job's runner labels, comma-separated (default {','.join(RUNNER)})",
    )
    parser.add_argument(
        "--action", default=ACTION, help=f"the action the workflow uses (default {ACTION})"
    )
    parser.add_argument(
        "--legs",
        type=int,
        default=1,
        metavar="N",
        help="fan-out: merge the target in N legs on hosted runners and publish them from a"
        " finish job on the GPU runner (writes the fan-out workflow; default 1: one merge job)",
    )
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    parser.add_argument("--offline", action="store_true", help="do not check the repos on the Hub")
    arguments.add_token_file_argument(parser)


def run(args: argparse.Namespace) -> int:
    from paramdelta.commands.plan import log_warnings
    from paramdelta.onboarding.scaffold import is_pinned, plan_files, write

    runner = tuple(label.strip() for label in args.runner.split(",") if label.strip())
    plan = plan_files(
        args.base,
        args.post,
        args.new_base,
        output=args.output,
        name=args.name,
        publish=args.publish,
        action=args.action,
        runner=runner,
        legs=args.legs,
    )
    output_exists = None if args.offline else check_on_hub(plan, args.token_file)
    written = write(args.dir, plan.files, force=args.force)
    log_warnings(plan.warnings)
    print(f"wrote {' and '.join(str(p) for p in written)} (target {plan.target.name!r})")
    print(next_steps(plan, runner, None if is_pinned(args.action) else args.action, output_exists))
    return 0


def check_on_hub(plan: Plan, token_file: str | None) -> bool | None:
    """Resolve the three checkpoints (errors are the Hub's, exit 4); whether the output exists."""
    from paramdelta.hub.sources import HubFactory
    from paramdelta.pipeline.plan import resolve

    hub = HubFactory(token_file)()
    checkpoints = resolve(hub, plan.target)
    output = plan.target.output_repo(checkpoints["new_base"].repo_id)
    for role, repo in checkpoints.items():
        log.info(f"  {role.replace('_', ' '):<9} {repo.repo_id}@{repo.sha[:12]}")
    return _exists(hub, output)


def _exists(hub: Hub, repo_id: str) -> bool:
    from paramdelta.errors import NotFoundError

    try:
        hub.repo_files(repo_id, files=False)
    except NotFoundError:
        return False
    return True


def next_steps(
    plan: Plan, runner: tuple[str, ...], unpinned: str | None, output_exists: bool | None
) -> str:
    """What is left to do by hand; ``unpinned``: the action, if it is not pinned to a sha."""
    target = plan.target
    templated = "{" in target.output
    exists = {True: "it exists", False: "create it first", None: "create it if needed"}
    steps = [
        "Hub credentials, one of:"
        "\n     - a repository secret HF_TOKEN: a fine-grained Hub token that reads the three"
        f" models (gated ones too) and writes {target.output};"
        + (
            "\n     - trusted publishing, no stored token: on the Hub page of"
            f" {target.output} ({exists[output_exists]}), Settings > Trusted Publishers: this"
            " GitHub repository, workflow paramdelta.yml, branch main (public, ungated"
            " inputs only)."
            if not templated
            else "\n       (trusted publishing needs an existing repo: the output here is"
            " named per release, so use the token)"
        ),
        f"A self-hosted GPU runner with the labels {', '.join(runner)} for the"
        f" {'merge and finish jobs' if target.legs > 1 else 'merge job'}"
        " (Settings > Actions > Runners), with disk for three checkpoints and the output.",
        *(
            [
                f"Pin the action: replace {unpinned} in the workflow with the full commit sha"
                " of that tag (uses: <owner>/<repo>@<sha> # <tag>)."
            ]
            if unpinned
            else []
        ),
        "Try it: paramdelta plan, then commit both files and run the workflow once by hand"
        " (Actions > paramdelta > Run workflow).",
    ]
    return "Next steps:\n" + "\n".join(f"  {i}. {step}" for i, step in enumerate(steps, 1))
