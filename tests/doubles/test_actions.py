"""The local composite-action runner, on throwaway actions and on the project's action.yml."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from doubles.actions import ActionRun, UnsupportedExpression, run_composite_action
from paramdelta.reporting.results import TargetResult, write_results

REPO = Path(__file__).resolve().parents[2]
# The interpreter running the tests is the one paramdelta is installed in.
VENV_BIN = str(Path(sys.executable).parent)


def write_action(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "action.yml").write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


def run_throwaway(tmp_path: Path, text: str, inputs: dict | None = None, **env: str) -> ActionRun:
    action = write_action(tmp_path / "action", text)
    return run_composite_action(action, inputs or {}, env=env, workdir=tmp_path)


# --- the runner itself, on throwaway actions ----------------------------------------------


def test_outputs_both_forms_and_step_summary(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        outputs:
          greeting:
            description: x
            value: ${{ steps.say.outputs.greeting }}
          report:
            description: x
            value: ${{ steps.say.outputs.report }}
          missing:
            description: x
            value: ${{ steps.say.outputs.nothing }}
        runs:
          using: composite
          steps:
            - id: say
              shell: bash
              run: |
                echo "greeting=hello=world" >> "$GITHUB_OUTPUT"
                printf 'report<<EOF_1\\nline one\\n\\nline = three\\nEOF_1\\n' >> "$GITHUB_OUTPUT"
                echo "## Summary" >> "$GITHUB_STEP_SUMMARY"
        """,
    )
    assert run.ok
    assert run.returncode == 0
    assert run.outputs == {
        "greeting": "hello=world",
        "report": "line one\n\nline = three",
        "missing": "",
    }
    assert run.summaries == ["## Summary\n"]
    assert run.step("say").outputs["greeting"] == "hello=world"


def test_inputs_reach_steps_only_through_env(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        inputs:
          who:
            description: x
            default: world
          shout:
            description: x
            default: "false"
          extra:
            description: x
        runs:
          using: composite
          steps:
            - shell: bash
              env:
                WHO: ${{ inputs.who }}
                SHOUT: ${{ inputs.shout }}
                FROM_JOB: ${{ env.JOB_LEVEL }}
                WHERE: ${{ github.action_path }}
              run: |
                echo "who=$WHO shout=$SHOUT job=$FROM_JOB"
                echo "input-var=${INPUT_WHO-unset} extra=${INPUT_EXTRA-unset}"
                echo "path-ok=$([[ "$WHERE" == "$GITHUB_ACTION_PATH" ]] && echo yes)"
                echo "cwd=$PWD"
        """,
        {"shout": True},
        JOB_LEVEL="from the job",
    )
    assert run.ok, run.stderr
    assert "who=world shout=true job=from the job\n" in run.stdout
    # The real runner sets no INPUT_* variables for composite actions (actions/runner#665).
    assert "input-var=unset extra=unset\n" in run.stdout
    assert "path-ok=yes\n" in run.stdout
    assert f"cwd={tmp_path.resolve()}\n" in run.stdout


def test_if_conditions_skip_steps(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        inputs:
          mode:
            description: x
            default: fast
        runs:
          using: composite
          steps:
            - id: slow
              if: inputs.mode == 'slow'
              shell: bash
              run: echo slow
            - id: fast
              if: ${{ inputs.mode == 'FAST' && env.SKIP != 'true' }}
              shell: bash
              run: echo fast
            - id: skipped-by-env
              if: env.SKIP_ME != 'true'
              shell: bash
              run: echo never
            - id: contains
              if: contains(inputs.mode, 'as') || steps.slow.outcome == 'success'
              shell: bash
              run: echo contains
        """,
        SKIP_ME="true",
    )
    assert run.ok
    outcomes = {step.id: step.outcome for step in run.steps}
    assert outcomes == {
        "slow": "skipped",
        "fast": "success",  # strings compare ignoring case, as on GitHub
        "skipped-by-env": "skipped",
        "contains": "success",
    }
    assert run.stdout == "fast\ncontains\n"


def test_a_failing_step_stops_the_run(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        runs:
          using: composite
          steps:
            - id: first
              shell: bash
              run: |
                echo "partial=yes" >> "$GITHUB_OUTPUT"
                echo "about to fail" >&2
                exit 3
            - id: second
              shell: bash
              run: echo second
            - id: cleanup
              if: failure()
              shell: bash
              run: echo "cleanup after ${{ steps.first.outcome }}"
            - id: last
              if: always()
              shell: bash
              run: echo last
        """,
    )
    assert not run.ok
    assert run.returncode == 3
    first, second, cleanup, last = run.steps
    assert (first.outcome, first.returncode, first.stderr) == ("failure", 3, "about to fail\n")
    assert first.outputs == {"partial": "yes"}  # outputs of a failed step still count
    assert (second.outcome, second.returncode) == ("skipped", None)
    assert cleanup.stdout == "cleanup after failure\n"
    assert last.stdout == "last\n"


def test_continue_on_error_keeps_going(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        runs:
          using: composite
          steps:
            - id: flaky
              continue-on-error: true
              shell: bash
              run: exit 5
            - shell: bash
              run: echo "${{ steps.flaky.outcome }} ${{ steps.flaky.conclusion }}"
        """,
    )
    assert run.ok
    assert run.returncode == 0
    assert run.steps[0].returncode == 5
    assert run.steps[1].stdout == "failure success\n"


def test_env_and_path_files_carry_to_later_steps(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        runs:
          using: composite
          steps:
            - shell: bash
              run: |
                mkdir -p "$RUNNER_TEMP/bin"
                printf '#!/bin/sh\\necho tool ran\\n' > "$RUNNER_TEMP/bin/tool"
                chmod +x "$RUNNER_TEMP/bin/tool"
                echo "$RUNNER_TEMP/bin" >> "$GITHUB_PATH"
                { echo "COLOUR=blue"; echo "NOTE<<END"; echo "two"; echo "lines"; echo "END"; } \\
                  >> "$GITHUB_ENV"
            - shell: bash
              if: env.COLOUR == 'blue'
              run: |
                tool
                echo "$NOTE"
        """,
    )
    assert run.ok, run.stderr
    assert run.steps[1].stdout == "tool ran\ntwo\nlines\n"
    assert run.env == {"COLOUR": "blue", "NOTE": "two\nlines"}


def test_uses_steps_are_recorded_not_run(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        inputs:
          version:
            description: x
            default: "3.11"
        runs:
          using: composite
          steps:
            - uses: actions/setup-python@0123456789abcdef0123456789abcdef01234567
              with:
                python-version: ${{ inputs.version }}
            - if: env.NEVER == 'true'
              uses: actions/checkout@0123456789abcdef0123456789abcdef01234567
        """,
    )
    used, skipped = run.steps
    assert used.uses == "actions/setup-python@0123456789abcdef0123456789abcdef01234567"
    assert (used.outcome, used.with_) == ("success", {"python-version": "3.11"})
    assert skipped.outcome == "skipped"


def test_masks_are_collected(tmp_path: Path) -> None:
    run = run_throwaway(
        tmp_path,
        """
        name: t
        description: t
        runs:
          using: composite
          steps:
            - shell: bash
              run: printf '::add-mask::%s\\n' 'sec%25ret'
        """,
    )
    assert run.masks == ["sec%ret"]


@pytest.mark.parametrize(
    "expression",
    [
        "${{ github.event_name }}",  # a context it does not model
        "${{ fromJSON(inputs.x) }}",  # a function it does not implement
        "${{ inputs.x > 1 }}",  # an operator it does not implement
        "${{ inputs.undeclared }}",
        "${{ steps.later.outputs.x }}",
    ],
)
def test_what_it_does_not_understand_raises(tmp_path: Path, expression: str) -> None:
    with pytest.raises(UnsupportedExpression):
        run_throwaway(
            tmp_path,
            f"""
            name: t
            description: t
            inputs:
              x:
                description: x
            runs:
              using: composite
              steps:
                - shell: bash
                  env:
                    VALUE: {expression}
                  run: "true"
                - id: later
                  shell: bash
                  run: "true"
            """,
        )


def test_undeclared_inputs_are_refused(tmp_path: Path) -> None:
    text = """
        name: t
        description: t
        runs:
          using: composite
          steps:
            - shell: bash
              run: "true"
        """
    with pytest.raises(ValueError, match="unexpected input"):
        run_throwaway(tmp_path, text, {"typo": "x"})


# --- the project's action.yml -------------------------------------------------------------

FAKE_PARAMDELTA = """\
#!/usr/bin/env bash
# Records how the action called it, then answers like plan would.
printf '%s\\0' "$0" "$@" > "$FAKE_ARGV"
printf 'HF_TOKEN=%s\\nGITHUB_TOKEN=%s\\nHF_OIDC_RESOURCE=%s\\n' \\
  "${HF_TOKEN-<unset>}" "${GITHUB_TOKEN-<unset>}" "${HF_OIDC_RESOURCE-<unset>}" > "$FAKE_ENV"
printf 'pending-count=1\\npending<<EOF\\n[{"target": "llama"}]\\nEOF\\n' >> "$GITHUB_OUTPUT"
exit "${FAKE_EXIT:-0}"
"""

# Stands in for setup-python's interpreter: logs its argv; `-m venv DIR` makes a "venv" holding
# this fake and a fake paramdelta.
FAKE_PYTHON = """\
#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$FAKE_PYTHON_LOG"
if [[ "$1" == -m && "$2" == venv ]]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
  cp "$FAKE_PARAMDELTA" "$3/bin/paramdelta"
fi
"""


class Fakes:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "fake-bin"
        self.bin.mkdir()
        self.paramdelta = self._script("paramdelta", FAKE_PARAMDELTA)
        self.python = self._script("python", FAKE_PYTHON)
        self.argv_file = tmp_path / "argv"
        self.env_file = tmp_path / "env"
        self.python_log = tmp_path / "python.log"
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        (self.workdir / "a-file").touch()  # something for a stray glob to expand to

    def _script(self, name: str, text: str) -> Path:
        path = self.bin / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path

    def env(self, *, install: bool = False, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_ARGV": str(self.argv_file),
            "FAKE_ENV": str(self.env_file),
            "FAKE_PYTHON_LOG": str(self.python_log),
            "FAKE_PARAMDELTA": str(self.paramdelta),
            **({} if install else {"PARAMDELTA_ACTION_SKIP_INSTALL": "true"}),
            **extra,
        }

    def run(self, inputs: dict, *, install: bool = False, **env: str) -> ActionRun:
        self.argv_file.unlink(missing_ok=True)
        return run_composite_action(
            REPO, inputs, env=self.env(install=install, **env), workdir=self.workdir
        )

    def argv(self) -> list[str]:
        """The arguments paramdelta got (without the program)."""
        return self.argv_file.read_text().split("\0")[1:-1]

    def program(self) -> str:
        return self.argv_file.read_text().split("\0")[0]

    def seen_env(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.env_file.read_text().splitlines())


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    return Fakes(tmp_path)


@pytest.mark.parametrize(
    ("inputs", "argv"),
    [
        ({}, ["plan", "--watchlist", "watchlist.yaml", "--github", "--result-file", "results/plan.json"]),
        (
            {"command": "plan", "target": "llama 3", "watchlist": "w.yaml"},
            [
                "plan", "--watchlist", "w.yaml", "--github", "--result-file", "results/plan.json",
                "--target", "llama 3",
            ],
        ),
        (
            {
                "command": "run",
                "target": "llama",
                "dry-run": "true",
                "device": "cuda",
                "extra-args": "--format json\n  --max-memory  1GiB",
            },
            [
                "run", "--watchlist", "watchlist.yaml", "--device", "cuda", "--github",
                "--result-file", "results/result.json", "--target", "llama", "--dry-run",
                "--format", "json", "--max-memory", "1GiB",
            ],
        ),
        ({"command": "validate"}, ["watchlist", "validate", "watchlist.yaml"]),
        (
            {"command": "merge", "extra-args": "--base a --post b --new-base c --output 'o *' *"},
            [
                "merge", "--device", "auto", "--base", "a", "--post", "b", "--new-base", "c",
                "--output", "'o", "*'", "*",  # split on whitespace only: no quotes, no globbing
            ],
        ),
        (
            {"command": "publish", "dry-run": "true", "extra-args": "out --repo org/name"},
            ["publish", "--dry-run", "out", "--repo", "org/name"],
        ),
        (
            {"command": "report", "results": "a.json  dir"},
            ["report", "a.json", "dir", "--watchlist", "watchlist.yaml", "--github"],
        ),
        (
            {"command": "report", "results": "plan/\nlegs/a.json\n  legs/b\n", "watchlist": "w.yaml"},
            ["report", "plan/", "legs/a.json", "legs/b", "--watchlist", "w.yaml", "--github"],
        ),
        (
            {"command": "report", "github-token": "ghs_0123456789abcdef"},
            ["report", "results", "--watchlist", "watchlist.yaml", "--github", "--issues"],
        ),
    ],
)  # fmt: skip
def test_action_builds_the_command_line(fakes: Fakes, inputs: dict, argv: list[str]) -> None:
    run = fakes.run(inputs)
    assert run.ok, run.stdout + run.stderr
    assert fakes.argv() == argv
    assert fakes.program() == str(fakes.paramdelta)  # the one on PATH: install was skipped
    setup_python, install, _ = run.steps
    assert setup_python.outcome == install.outcome == "skipped"


def test_action_outputs_come_from_the_paramdelta_step(fakes: Fakes) -> None:
    run = fakes.run({"command": "plan"})
    assert run.outputs == {
        "pending": '[{"target": "llama"}]',
        "pending-count": "1",
        **dict.fromkeys(
            [
                "targets",
                "targets-count",
                "whole",
                "whole-count",
                "legs",
                "legs-count",
                "fan-out",
                "fan-out-count",
            ],
            "",
        ),
        "published": "",
        "summary": "",
        "result-file": "results/plan.json",
    }
    assert fakes.run({"command": "run"}).outputs["result-file"] == "results/result.json"


def test_action_passes_paramdelta_failures_through(fakes: Fakes) -> None:
    run = fakes.run({"command": "run"}, FAKE_EXIT="4")
    assert not run.ok
    assert run.returncode == 4


def test_tokens_are_masked_and_exported_only_when_given(fakes: Fakes) -> None:
    token = "hf_abcdefghijklmnopqrstuvwxyz"
    github_token = "ghs_abcdefghijklmnopqrstuvwxyz"
    run = fakes.run({"command": "report", "hf-token": token, "github-token": github_token})
    assert run.ok, run.stderr
    assert run.masks == [token, github_token]
    # Printed only inside the mask commands (which the runner swallows), never otherwise.
    for secret in (token, github_token):
        assert [line for line in run.stdout.splitlines() if secret in line] == [
            f"::add-mask::{secret}"
        ]
        assert secret not in run.stderr
    assert fakes.seen_env() == {
        "HF_TOKEN": token,
        "GITHUB_TOKEN": github_token,
        "HF_OIDC_RESOURCE": "<unset>",
    }

    # An empty input leaves a token from the job's env alone, and opens no issues.
    run = fakes.run({"command": "report"}, HF_TOKEN="hf_from_the_job_env")
    assert run.masks == []
    assert fakes.seen_env()["HF_TOKEN"] == "hf_from_the_job_env"
    assert fakes.seen_env()["GITHUB_TOKEN"] == "<unset>"
    assert "--issues" not in fakes.argv()


def test_the_fan_out_inputs_become_run_options(fakes: Fakes) -> None:
    run = fakes.run({"command": "run", "target": "big", "leg": "2/4", "stream": "true"})
    assert run.ok, run.stderr
    assert fakes.argv()[-5:] == ["--target", "big", "--leg", "2/4", "--stream"]
    run = fakes.run({"command": "run", "target": "big", "finish": "true"})
    assert run.ok, run.stderr
    assert fakes.argv()[-3:] == ["--target", "big", "--finish"]


def test_trusted_publishing_sets_the_oidc_resource(fakes: Fakes) -> None:
    run = fakes.run({"command": "run", "hf-oidc-resource": "org/model-ParamDelta"})
    assert run.ok, run.stderr
    assert fakes.seen_env()["HF_OIDC_RESOURCE"] == "org/model-ParamDelta"
    assert fakes.seen_env()["HF_TOKEN"] == "<unset>"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"command": "deploy"}, "command must be plan, run, merge, publish, validate or report"),
        ({"command": "run", "dry-run": "yes"}, "dry-run must be 'true' or 'false'"),
        ({"command": "run", "finish": "yes"}, "finish must be 'true' or 'false', not 'yes'"),
        ({"command": "plan", "leg": "1/4"}, "leg, finish and stream apply to run only"),
        ({"command": "report", "stream": "true"}, "leg, finish and stream apply to run only"),
        ({"command": "validate", "target": "x"}, "target applies to plan and run only"),
        ({"command": "report", "dry-run": "true"}, "dry-run applies to run and publish only"),
        ({"command": "run", "results": "a b"}, "run: results must name one directory"),
        ({"command": "plan", "results": "a\nb"}, "plan: results must name one directory"),
        (
            {"hf-token": "hf_abcdefgh", "hf-oidc-resource": "o/n"},
            "give hf-token or hf-oidc-resource, not both",
        ),
    ],
)
def test_action_refuses_bad_inputs(fakes: Fakes, inputs: dict, message: str) -> None:
    run = fakes.run(inputs)
    assert run.returncode == 2
    assert f"::error title=paramdelta action::{message}" in run.stdout
    assert not fakes.argv_file.exists()  # refused before paramdelta ran


@pytest.mark.parametrize(
    ("inputs", "cpu_torch"),
    [
        ({"command": "plan"}, True),
        ({"command": "report"}, True),
        ({"command": "run", "device": "cpu"}, True),
        ({"command": "run", "device": "cuda"}, False),
        ({"command": "merge"}, False),
    ],
)
def test_install_picks_the_torch_wheel(fakes: Fakes, inputs: dict, cpu_torch: bool) -> None:
    run = fakes.run(inputs, install=True)
    assert run.ok, run.stdout + run.stderr
    setup_python, install, _ = run.steps
    assert setup_python.uses is not None
    assert setup_python.uses.startswith("actions/setup-python@")
    assert setup_python.with_ == {"python-version": "3.11"}
    venv = Path(install.outputs["paramdelta"]).parent.parent
    assert venv.name == ("paramdelta-venv-cpu" if cpu_torch else "paramdelta-venv-default")
    pip = "-m pip install --disable-pip-version-check --no-input --progress-bar off"
    expected = [f"-m venv {venv}"]
    if cpu_torch:
        expected.append(f"{pip} --index-url https://download.pytorch.org/whl/cpu torch>=2.2,<3")
    extra = "[check]" if inputs["command"] == "run" else ""  # run makes the pre-publish check
    expected.append(f"{pip} {REPO}{extra}")
    assert fakes.python_log.read_text().splitlines() == expected
    assert fakes.program() == str(venv / "bin" / "paramdelta")  # the venv's, not PATH's


# --- the project's action.yml with the real paramdelta -------------------------------------


def real_env(**extra: str) -> dict[str, str]:
    return {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "PARAMDELTA_ACTION_SKIP_INSTALL": "true",
        **extra,
    }


def test_validate_accepts_the_example_watchlist() -> None:
    run = run_composite_action(
        REPO, {"command": "validate"}, env=real_env(), workdir=REPO
    )  # reads the repo's watchlist.yaml and writes nothing there
    assert run.ok, run.stdout + run.stderr
    assert run.returncode == 0


def test_validate_rejects_a_broken_watchlist(tmp_path: Path) -> None:
    broken = tmp_path / "watchlist.yaml"
    broken.write_text("targets: [unclosed\n")
    run = run_composite_action(REPO, {"command": "validate"}, env=real_env(), workdir=tmp_path)
    assert not run.ok
    assert run.returncode == 2  # a configuration error
    assert "watchlist.yaml" in run.stderr


def test_report_writes_the_summary(tmp_path: Path) -> None:
    (tmp_path / "watchlist.yaml").write_text(
        "targets:\n  - {name: llama-3.1, base: o/b, post: o/p, new_base: o/n, output: o/out}\n"
    )
    write_results(
        tmp_path / "results" / "leg-1" / "result.json",
        [
            TargetResult(
                target="llama-3.1",
                status="failed",
                error="Hub error 503",
                exit_code=4,
                duration_s=12.0,
            )
        ],
    )
    run = run_composite_action(REPO, {"command": "report"}, env=real_env(), workdir=tmp_path)
    assert run.ok, run.stdout + run.stderr
    assert "llama-3.1" in run.outputs["summary"]
    assert "Hub error 503" in run.outputs["summary"]
    assert run.summaries[-1].strip() == run.outputs["summary"].strip()
