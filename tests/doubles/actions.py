"""Run a composite GitHub Action locally, the way the Actions runner does, for tests.

`run_composite_action` reads ``action.yml``, fills in input defaults, evaluates
the ``${{ }}`` expressions, runs each ``run:`` step with bash and the runner's
per-step command files, and returns the action's outputs, every step's exit
status, output and job summary. ``uses:`` steps are recorded, not run.

It understands only the expression language that our action uses (contexts
``inputs``, ``github.action_path``/``github.workspace``, ``steps.<id>.outputs``,
``steps.<id>.outcome``/``conclusion``, ``env``, ``runner.temp``/``runner.os``;
literals; ``==``, ``!=``, ``!``, ``&&``, ``||``, parentheses; ``contains()`` and
the status functions) and raises `UnsupportedExpression` on anything else
rather than guess. Like the real runner (actions/runner#665), it does not set
``INPUT_*`` variables for a composite action: an action must map its inputs
to ``env:`` itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

__all__ = ["ActionRun", "StepRun", "UnsupportedExpression", "run_composite_action"]

DEFAULT_STEP_TIMEOUT = 600.0
# The runner's default bash invocation for `shell: bash`.
BASH = ("bash", "--noprofile", "--norc", "-eo", "pipefail")
_STATUS_FUNCTIONS = ("success", "failure", "always", "cancelled")


class UnsupportedExpression(ValueError):
    """An expression, context or step feature this local runner does not implement."""


class StepRun(NamedTuple):
    """What one step of the action did."""

    position: int  # in runs.steps, from 0
    id: str | None
    name: str
    uses: str | None  # set for a `uses:` step, which is recorded and not run
    with_: dict[str, str]  # a `uses:` step's evaluated `with:`
    outcome: str  # success | failure | skipped
    conclusion: str  # the outcome, except success for a failure with continue-on-error
    returncode: int | None  # None when the step did not run a process
    stdout: str
    stderr: str
    outputs: dict[str, str]
    summary: str


class ActionRun(NamedTuple):
    """The result of a whole composite action."""

    outputs: dict[str, str]
    steps: list[StepRun]
    masks: list[str]  # values registered with ::add-mask::
    env: dict[str, str]  # variables the steps exported through GITHUB_ENV

    @property
    def ok(self) -> bool:
        return all(step.conclusion != "failure" for step in self.steps)

    @property
    def returncode(self) -> int:
        """The exit status of the first failing step, else 0."""
        return next((s.returncode or 1 for s in self.steps if s.conclusion == "failure"), 0)

    @property
    def summaries(self) -> list[str]:
        """The job summary each step wrote (empty for steps that wrote none)."""
        return [step.summary for step in self.steps]

    @property
    def stdout(self) -> str:
        return "".join(step.stdout for step in self.steps)

    @property
    def stderr(self) -> str:
        return "".join(step.stderr for step in self.steps)

    def step(self, step_id: str) -> StepRun:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def run_composite_action(
    action_dir: str | os.PathLike[str],
    inputs: Mapping[str, str | bool | int],
    *,
    env: Mapping[str, str],
    workdir: str | os.PathLike[str],
    runner_temp: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_STEP_TIMEOUT,
) -> ActionRun:
    """Run the composite action in ``action_dir`` with ``inputs``.

    ``env`` plays the workflow's and job's ``env:``: the ``env`` context and the
    steps' environment (over this process's own). Steps run in ``workdir``
    (``github.workspace``); ``runner_temp`` defaults to a fresh directory that is
    removed afterwards.
    """
    action_dir = Path(action_dir).resolve()
    action = _load_action(action_dir)
    with contextlib.ExitStack() as stack:
        if runner_temp is None:
            runner_temp = stack.enter_context(tempfile.TemporaryDirectory(prefix="runner-temp-"))
        runner = _Runner(action, action_dir, inputs, env, Path(workdir), Path(runner_temp), timeout)
        return runner.run()


def _load_action(action_dir: Path) -> dict[str, Any]:
    for name in ("action.yml", "action.yaml"):
        path = action_dir / name
        if path.is_file():
            action = yaml.safe_load(path.read_text(encoding="utf-8"))
            break
    else:
        raise FileNotFoundError(f"{action_dir}: no action.yml")
    runs = action.get("runs") or {}
    if runs.get("using") != "composite":
        raise UnsupportedExpression(f"{path}: runs.using must be composite")
    return action


class _Runner:
    def __init__(
        self,
        action: dict[str, Any],
        action_dir: Path,
        inputs: Mapping[str, str | bool | int],
        env: Mapping[str, str],
        workdir: Path,
        runner_temp: Path,
        timeout: float,
    ) -> None:
        self.action = action
        self.action_dir = action_dir
        self.workdir = workdir.resolve()
        self.runner_temp = runner_temp.resolve()
        self.timeout = timeout
        self.job_env = dict(env)
        self.exported: dict[str, str] = {}  # GITHUB_ENV
        self.paths: list[str] = []  # GITHUB_PATH, newest first
        self.masks: list[str] = []
        self.steps: dict[str, StepRun] = {}
        self.failed = False
        declared = action.get("inputs") or {}
        if unknown := sorted(set(inputs) - set(declared)):
            raise ValueError(
                f"unexpected input(s) {unknown}; the action declares {sorted(declared)}"
            )
        self.inputs: dict[str, str] = {}
        for name, spec in declared.items():
            if name in inputs:
                self.inputs[name] = _to_string(inputs[name])
            else:
                default = (spec or {}).get("default", "")
                self.inputs[name] = self.interpolate(_to_string(default))

    def run(self) -> ActionRun:
        results = [self.run_step(i, step) for i, step in enumerate(self.action["runs"]["steps"])]
        outputs = {
            name: self.interpolate(str((spec or {}).get("value", "")))
            for name, spec in (self.action.get("outputs") or {}).items()
        }
        return ActionRun(outputs, results, self.masks, dict(self.exported))

    # --- steps ------------------------------------------------------------------------------

    def run_step(self, index: int, step: dict[str, Any]) -> StepRun:
        step_id = step.get("id")
        if step_id is not None and step_id in self.steps:
            raise ValueError(f"step id {step_id!r} is used twice")
        name = self.interpolate(str(step.get("name") or step.get("uses") or step_id or index))
        uses = step.get("uses")
        if uses is None and "run" not in step:
            raise UnsupportedExpression(f"step {name!r}: neither run nor uses")
        base = StepRun(index, step_id, name, uses, {}, "skipped", "skipped", None, "", "", {}, "")

        if self.condition(step.get("if")):
            if uses is not None:
                with_ = {
                    k: self.interpolate(_to_string(v)) for k, v in (step.get("with") or {}).items()
                }
                result = base._replace(with_=with_, outcome="success", conclusion="success")
            else:
                result = self.run_script(step, base)
                conclusion = result.outcome
                if result.outcome == "failure":
                    if self._continue_on_error(step):
                        conclusion = "success"
                    else:
                        self.failed = True
                result = result._replace(conclusion=conclusion)
        else:
            result = base
        if step_id is not None:
            self.steps[step_id] = result
        return result

    def run_script(self, step: dict[str, Any], base: StepRun) -> StepRun:
        shell = step.get("shell")
        if shell != "bash":
            raise UnsupportedExpression(f"step {base.name!r}: shell {shell!r} (only bash)")
        files_dir = self.runner_temp / "_runner_file_commands" / f"step-{base.position}"
        files_dir.mkdir(parents=True, exist_ok=True)
        files = {
            name: files_dir / name.lower()
            for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY")
        }
        for path in files.values():
            path.write_text("")
        script = files_dir / "script.sh"
        script.write_text(self.interpolate(str(step["run"])), encoding="utf-8")

        step_env = {k: self.interpolate(_to_string(v)) for k, v in (step.get("env") or {}).items()}
        proc_env = {
            **os.environ,
            **self.runner_variables(),
            **self.job_env,
            **self.exported,
            **step_env,
            **{name: str(path) for name, path in files.items()},
        }
        if self.paths:
            proc_env["PATH"] = os.pathsep.join([*self.paths, proc_env.get("PATH", "")])
        cwd = self.workdir
        if "working-directory" in step:
            cwd = self.workdir / self.interpolate(str(step["working-directory"]))
        proc = subprocess.run(
            [*BASH, str(script)],
            cwd=cwd,
            env=proc_env,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            check=False,
        )
        self.masks.extend(_masks(proc.stdout + proc.stderr))
        self.exported.update(_parse_file_command(files["GITHUB_ENV"]))
        self.paths[:0] = reversed(files["GITHUB_PATH"].read_text(encoding="utf-8").splitlines())
        return base._replace(
            outcome="success" if proc.returncode == 0 else "failure",
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            outputs=_parse_file_command(files["GITHUB_OUTPUT"]),
            summary=files["GITHUB_STEP_SUMMARY"].read_text(encoding="utf-8"),
        )

    def runner_variables(self) -> dict[str, str]:
        return {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_ACTION_PATH": str(self.action_dir),
            "GITHUB_WORKSPACE": str(self.workdir),
            "RUNNER_TEMP": str(self.runner_temp),
            "RUNNER_OS": "Linux",
        }

    def _continue_on_error(self, step: dict[str, Any]) -> bool:
        value = step.get("continue-on-error", False)
        if not isinstance(value, bool):
            raise UnsupportedExpression(f"continue-on-error {value!r}: only true or false")
        return value

    # --- expressions ------------------------------------------------------------------------

    def condition(self, expression: Any) -> bool:
        """Evaluate a step's ``if:``; without a status function it means ``success() && (...)``."""
        if expression is None:
            return not self.failed
        if isinstance(expression, bool):
            return expression and not self.failed
        text = str(expression).strip()
        if whole := re.fullmatch(r"\$\{\{(.*)\}\}", text, re.DOTALL):
            text = whole.group(1)
        tokens = _tokenize(text)
        checks_status = any(kind == "name" and value in _STATUS_FUNCTIONS for kind, value in tokens)
        if self.failed and not checks_status:
            return False
        return _truthy(_Parser(tokens, self).parse())

    def interpolate(self, text: str) -> str:
        """Replace each ``${{ expr }}`` in ``text`` with its value as a string."""
        out = []
        pos = 0
        while (start := text.find("${{", pos)) != -1:
            end = _find_close(text, start + 3)
            out.append(text[pos:start])
            out.append(_to_string(_Parser(_tokenize(text[start + 3 : end]), self).parse()))
            pos = end + 2
        out.append(text[pos:])
        return "".join(out)

    def lookup(self, path: list[str]) -> Any:
        """The value of a context reference such as ``steps.x.outputs.y``."""
        context, rest = path[0].lower(), path[1:]
        dotted = ".".join(path)
        if context == "inputs" and len(rest) == 1:
            name = _find_key(self.inputs, rest[0])
            if name is None:
                raise UnsupportedExpression(f"{dotted}: the action declares no such input")
            return self.inputs[name]
        if context == "env" and len(rest) == 1:
            env = {**self.job_env, **self.exported}
            name = _find_key(env, rest[0])
            return None if name is None else env[name]
        if context == "github" and len(rest) == 1:
            known = {"action_path": str(self.action_dir), "workspace": str(self.workdir)}
            if rest[0].lower() in known:
                return known[rest[0].lower()]
        if context == "runner" and len(rest) == 1:
            known = {"temp": str(self.runner_temp), "os": "Linux"}
            if rest[0].lower() in known:
                return known[rest[0].lower()]
        if context == "steps" and len(rest) >= 2:
            step_id = _find_key(self.steps, rest[0])
            if step_id is None:
                raise UnsupportedExpression(f"{dotted}: no earlier step has id {rest[0]!r}")
            step = self.steps[step_id]
            field = rest[1].lower()
            if field == "outputs" and len(rest) == 3:
                name = _find_key(step.outputs, rest[2])
                return None if name is None else step.outputs[name]
            if field in ("outcome", "conclusion") and len(rest) == 2:
                return step.outcome if field == "outcome" else step.conclusion
        raise UnsupportedExpression(f"{dotted}: not a context this local runner knows")

    def call(self, name: str, args: list[Any]) -> Any:
        name = name.lower()
        if name in _STATUS_FUNCTIONS and not args:
            return {
                "success": not self.failed,
                "failure": self.failed,
                "always": True,
                "cancelled": False,
            }[name]
        if name == "contains" and len(args) == 2:
            haystack, needle = args
            if isinstance(haystack, list):
                return any(_loose_equal(item, needle) for item in haystack)
            return _to_string(needle).lower() in _to_string(haystack).lower()
        raise UnsupportedExpression(f"{name}() with {len(args)} argument(s)")


# --- the expression language ------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<op>==|!=|&&|\|\||[!().,])
      | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match or match.end() == pos:
            raise UnsupportedExpression(f"cannot read expression {text!r} at {text[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _find_close(text: str, pos: int) -> int:
    """The index of the ``}}`` that ends an expression, skipping string literals."""
    in_string = False
    while pos < len(text):
        if text[pos] == "'":
            in_string = not in_string  # '' inside a string toggles twice: still inside
        elif not in_string and text.startswith("}}", pos):
            return pos
        pos += 1
    raise UnsupportedExpression(f"unterminated ${{{{ in {text!r}")


class _Parser:
    """Recursive descent over: or := and ('||' and)*; and := cmp ('&&' cmp)*;
    cmp := unary (('=='|'!=') unary)?; unary := '!' unary | primary."""

    def __init__(self, tokens: list[tuple[str, str]], runner: _Runner) -> None:
        self.tokens = tokens
        self.pos = 0
        self.runner = runner

    def parse(self) -> Any:
        if not self.tokens:
            raise UnsupportedExpression("empty expression")
        # Parse to a tree first, so that && and || can short-circuit like the runner's.
        tree = self.or_()
        if self.pos != len(self.tokens):
            raise UnsupportedExpression(f"unexpected {self.tokens[self.pos][1]!r}")
        return self.evaluate(tree)

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise UnsupportedExpression(f"expected {value or 'more'}, found {token}")
        self.pos += 1
        return token

    def or_(self) -> Any:
        node = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            node = ("||", node, self.and_())
        return node

    def and_(self) -> Any:
        node = self.comparison()
        while self.peek() == ("op", "&&"):
            self.take()
            node = ("&&", node, self.comparison())
        return node

    def comparison(self) -> Any:
        node = self.unary()
        token = self.peek()
        if token in (("op", "=="), ("op", "!=")):
            self.take()
            node = (token[1], node, self.unary())
        return node

    def unary(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return ("!", self.unary())
        return self.primary()

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "string":
            return ("literal", value[1:-1].replace("''", "'"))
        if kind == "number":
            return ("literal", float(value))
        if (kind, value) == ("op", "("):
            node = self.or_()
            self.take(")")
            return node
        if kind != "name":
            raise UnsupportedExpression(f"unexpected {value!r}")
        literals = {"true": True, "false": False, "null": None}
        if value in literals:
            return ("literal", literals[value])
        if self.peek() == ("op", "("):
            self.take()
            args = []
            while self.peek() != ("op", ")"):
                args.append(self.or_())
                if self.peek() == ("op", ","):
                    self.take()
            self.take(")")
            return ("call", value, args)
        path = [value]
        while self.peek() == ("op", "."):
            self.take()
            kind, name = self.take()
            if kind != "name":
                raise UnsupportedExpression(f"unexpected {name!r} after '.'")
            path.append(name)
        return ("ref", path)

    def evaluate(self, node: Any) -> Any:
        op = node[0]
        if op == "literal":
            return node[1]
        if op == "ref":
            return self.runner.lookup(node[1])
        if op == "call":
            return self.runner.call(node[1], [self.evaluate(arg) for arg in node[2]])
        if op == "!":
            return not _truthy(self.evaluate(node[1]))
        if op in ("==", "!="):
            equal = _loose_equal(self.evaluate(node[1]), self.evaluate(node[2]))
            return equal if op == "==" else not equal
        left = self.evaluate(node[1])
        if op == "&&":
            return self.evaluate(node[2]) if _truthy(left) else left
        if op == "||":
            return left if _truthy(left) else self.evaluate(node[2])
        raise AssertionError(op)


def _truthy(value: Any) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return value not in (None, False, 0, "")


def _to_number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not text:
        return 0.0
    try:
        return float(int(text, 0)) if text.lower().startswith(("0x", "0o")) else float(text)
    except ValueError:
        return math.nan


def _loose_equal(left: Any, right: Any) -> bool:
    """The runner's `==`: strings ignore case; different types compare as numbers."""
    if isinstance(left, str) and isinstance(right, str):
        return left.lower() == right.lower()
    if type(left) is type(right) and not isinstance(left, (int, float)):
        return bool(left == right)
    return _to_number(left) == _to_number(right)  # NaN never equals anything


def _to_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def _find_key(mapping: Mapping[str, Any], name: str) -> str | None:
    """Context property names ignore case, as in the runner."""
    if name in mapping:
        return name
    return next((key for key in mapping if key.lower() == name.lower()), None)


# --- runner file commands ---------------------------------------------------------------


def _parse_file_command(path: Path) -> dict[str, str]:
    """Parse GITHUB_OUTPUT / GITHUB_ENV: ``name=value`` lines and ``name<<DELIM`` blocks."""
    values: dict[str, str] = {}
    lines = iter(path.read_text(encoding="utf-8").splitlines())
    for line in lines:
        if not line:
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc != -1 and (equals == -1 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            values[_check_name(name, path)] = _read_heredoc(lines, delimiter, name, path)
        elif equals != -1:
            values[_check_name(line[:equals], path)] = line[equals + 1 :]
        else:
            raise ValueError(f"{path.name}: invalid line {line!r}")
    return values


def _read_heredoc(lines: Iterator[str], delimiter: str, name: str, path: Path) -> str:
    if not delimiter:
        raise ValueError(f"{path.name}: {name!r} has an empty delimiter")
    body: list[str] = []
    for line in lines:
        if line == delimiter:
            return "\n".join(body)
        body.append(line)
    raise ValueError(f"{path.name}: {name!r} has no closing delimiter {delimiter!r}")


def _check_name(name: str, path: Path) -> str:
    if not name:
        raise ValueError(f"{path.name}: a line has an empty name")
    return name


def _masks(output: str) -> list[str]:
    """Values a step registered with ``::add-mask::`` (unescaped as the runner does)."""
    masks = []
    for line in output.splitlines():
        if line.startswith("::add-mask::"):
            value = line[len("::add-mask::") :]
            for escaped, plain in (("%0D", "\r"), ("%0A", "\n"), ("%25", "%")):
                value = value.replace(escaped, plain)
            masks.append(value)
    return masks
