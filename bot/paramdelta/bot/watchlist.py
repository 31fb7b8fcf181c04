"""watchlist.yaml: load, validate against the shipped JSON Schema, report errors by line.

The schema (schemas/watchlist.schema.json) is the single definition of the
format: editors use it for completion, and every structural error here comes
from it. This module turns jsonschema's errors into one line each naming the
file, the line and the field, then checks what a schema cannot: duplicate
names and outputs, output templates, card templates, and licence naming rules.
"""

from __future__ import annotations

import difflib
import json
import math
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import yaml

from paramdelta.engine.options import DEFAULT_SHARD_SIZE, parse_size
from paramdelta.errors import UsageError
from paramdelta.repo_ids import parse_spec

SCHEMA_RESOURCE = "schemas/watchlist.schema.json"
OUTPUT_FIELDS = (
    "new_base_owner",
    "new_base_name",
    "post_owner",
    "post_name",
    "base_owner",
    "base_name",
)
DEFAULT_OPTIONS: dict[str, Any] = {
    "dtype": "auto",
    "alpha": 1.0,
    "vocab_policy": "error",
    "shard_size": "5GB",
    "private": False,
    "publish": "commit",
    "card_template": None,
    "tags": [],
    "enabled": True,
}
MAX_REPORTED = 50


class Problem(NamedTuple):
    """One finding, ready to print as ``file:line: field: message``."""

    file: str
    line: int
    field: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {kind}{where}{self.message}"


class WatchlistError(UsageError):
    """A watchlist with problems; str() is the first, `problems` has them all."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        more = len(self.problems) - 1
        suffix = f" (and {more} more: run `paramdelta watchlist validate`)" if more else ""
        super().__init__(f"{self.problems[0]}{suffix}")


class RepoRef(NamedTuple):
    """A Hub repo at a branch, tag or commit."""

    repo: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"{self.repo}@{self.revision}"


class Family(NamedTuple):
    """The newest repo of ``author`` whose name matches the glob ``pattern``."""

    author: str
    pattern: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"{self.author}/{self.pattern} (newest)"


@dataclass(frozen=True)
class Target:
    name: str
    base: RepoRef
    post: RepoRef
    new_base: RepoRef | Family
    output: str  # may hold {placeholders}, see OUTPUT_FIELDS
    dtype: str = "auto"
    alpha: float = 1.0
    vocab_policy: str = "error"
    shard_size: int = DEFAULT_SHARD_SIZE
    private: bool = False
    publish: str = "commit"
    card_template: Path | None = None
    tags: tuple[str, ...] = ()
    enabled: bool = True
    line: int = 0

    def output_repo(self, new_base_repo: str) -> str:
        """The output repo id for a resolved new base."""
        return self.output.format(**_name_fields(self.base.repo, self.post.repo, new_base_repo))

    def recipe(self) -> dict[str, Any]:
        """What, besides the three commits, decides the merged bytes (see lineage)."""
        return {"alpha": self.alpha, "dtype": self.dtype, "vocab_policy": self.vocab_policy}


@dataclass
class Watchlist:
    path: Path
    targets: list[Target]
    warnings: list[Problem] = field(default_factory=list)

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        names = ", ".join(t.name for t in self.targets)
        raise UsageError(f"{self.path}: no target named {name!r} (targets: {names})")


def _name_fields(base: str, post: str, new_base: str) -> dict[str, str]:
    fields = {}
    for role, repo in (("base", base), ("post", post), ("new_base", new_base)):
        owner, _, name = repo.partition("/")
        fields[f"{role}_owner"], fields[f"{role}_name"] = owner, name
    return fields


def schema() -> dict[str, Any]:
    text = resources.files("paramdelta").joinpath(SCHEMA_RESOURCE).read_text()
    return json.loads(text)


# -- YAML with line numbers --------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _node_at(root: yaml.Node, path: Sequence[str | int], key: bool = False) -> yaml.Node:
    """The YAML node at a JSON path (the key's node if ``key``), as deep as it exists."""
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    node = value_node
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _line(root: yaml.Node | None, path: Sequence[str | int], *, key_name: str | None = None) -> int:
    if root is None:
        return 1
    node = _node_at(root, path)
    if key_name is not None and isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if key_node.value == key_name:
                return key_node.start_mark.line + 1
    return node.start_mark.line + 1


def _field(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# -- schema errors -> friendly lines ----------------------------------------------


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return root["$defs"][ref.removeprefix("#/$defs/")] if ref.startswith("#/$defs/") else schema


def _reachable(schema: dict[str, Any], root: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A schema and every schema it combines (through $ref, allOf, oneOf, anyOf)."""
    schema = _resolve(schema, root)
    yield schema
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key, []):
            yield from _reachable(sub, root)


def _keys(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    return {k for s in _reachable(schema, root) for k in s.get("properties", {})}


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean"}


def _accepts_type(schema: dict[str, Any], root: dict[str, Any], instance: Any) -> bool:
    wanted = {s["type"] for s in _reachable(schema, root) if "type" in s}
    kind = _JSON_TYPES.get(type(instance), "number")
    return not wanted or kind in wanted or (kind == "number" and "integer" in wanted)


def _explain(
    error: jsonschema.ValidationError, root: dict[str, Any]
) -> tuple[list[str | int], str, str | None] | None:
    """(path, message, offending key) for one jsonschema error; None to skip it."""
    path = list(error.absolute_path)
    kind = error.validator
    if kind in ("oneOf", "anyOf"):
        branch = _meant_branch(error, root)
        if branch is not None:
            return _explain(branch, root)
        return path, error.schema.get("x-message", "does not match any allowed form"), None
    if kind == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return path, f"{', '.join(repr(k) for k in missing)} required", None
    if kind in ("additionalProperties", "unevaluatedProperties"):
        allowed = _keys(error.schema, root)
        unknown = [k for k in error.instance if k not in allowed]
        if not unknown:
            return None  # a known key that failed its own rule: that error says why
        hint = difflib.get_close_matches(str(unknown[0]), sorted(allowed), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return path, f"unknown key {unknown[0]!r}{suggestion}", str(unknown[0])
    if kind == "type":
        names = {"object": "a mapping", "array": "a list", "string": "a string"}
        wanted = names.get(str(error.validator_value), f"a {error.validator_value}")
        return path, f"must be {wanted}, not {type(error.instance).__name__}", None
    if "x-message" in error.schema:
        return path, f"{error.instance!r} {error.schema['x-message']}"[:200], None
    if kind == "enum":
        allowed_values = ", ".join(map(str, error.validator_value))
        return path, f"must be one of {allowed_values}, not {error.instance!r}", None
    if kind == "const":
        return path, f"must be {error.validator_value!r}, not {error.instance!r}", None
    if kind in ("minItems", "minLength"):
        return path, "must not be empty", None
    return path, error.message, None


def _meant_branch(
    error: jsonschema.ValidationError, root: dict[str, Any]
) -> jsonschema.ValidationError | None:
    """The failure of the one alternative the author evidently meant, if there is one.

    Meant: it accepts the value's type and, for a mapping, shares the most keys
    with it (at least one). Otherwise the alternatives' own x-message explains.
    """
    branches = error.schema[error.validator]
    instance = error.instance
    candidates = [i for i, b in enumerate(branches) if _accepts_type(b, root, instance)]
    if isinstance(instance, dict):
        scores = {i: len(set(instance) & _keys(branches[i], root)) for i in candidates}
        top = max(scores.values(), default=0)
        candidates = [i for i, score in scores.items() if score == top and top > 0]
    if len(candidates) != 1:
        return None
    errors = [e for e in error.context or [] if e.schema_path[0] == candidates[0]]
    return min(errors, key=lambda e: len(e.absolute_path), default=None)


def _schema_problems(doc: Any, node: yaml.Node | None, file: str) -> Iterator[Problem]:
    root = schema()
    validator = jsonschema.Draft202012Validator(root)
    problems = set()
    for error in validator.iter_errors(doc):
        explained = _explain(error, root)
        if explained is not None:
            path, message, key = explained
            problems.add(Problem(file, _line(node, path, key_name=key), _field(path), message))
    yield from sorted(problems)


# -- loading -----------------------------------------------------------------------


def load(path: str | Path) -> Watchlist:
    """Load and fully validate a watchlist; WatchlistError lists every problem."""
    watchlist, problems = check(path)
    if problems:
        raise WatchlistError(problems)
    assert watchlist is not None
    return watchlist


def check(path: str | Path) -> tuple[Watchlist | None, list[Problem]]:
    """Validate; returns the watchlist (None if invalid) and the problems found."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        return None, [Problem(file, 1, "", f"cannot read: {reason}")]
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e)
        return None, [Problem(file, line, "", f"invalid YAML: {problem}")]
    problems = list(_schema_problems(doc, node, file))
    if problems:
        return None, problems[:MAX_REPORTED]
    targets, problems = _targets(doc, node, path)
    errors = sorted(p for p in problems if not p.warning)
    if errors:
        return None, errors[:MAX_REPORTED]
    return Watchlist(path, targets, [p for p in problems if p.warning]), []


def _ref(value: Any) -> RepoRef:
    if isinstance(value, str):
        return RepoRef(*parse_spec(value))  # the same `org/name[@rev]` as the command line
    return RepoRef(value["repo"], value.get("revision", "main"))


def _targets(
    doc: dict[str, Any], node: yaml.Node | None, path: Path
) -> tuple[list[Target], list[Problem]]:
    from paramdelta.bot.card import check_template  # card imports nothing from here

    file = str(path)
    defaults = {**DEFAULT_OPTIONS, **doc.get("defaults", {})}
    problems: list[Problem] = []
    targets: list[Target] = []
    names: dict[str, int] = {}
    outputs: dict[tuple[str, object], int] = {}
    checked_templates: dict[Path, str | None] = {}

    for index, raw in enumerate(doc["targets"]):
        where: list[str | int] = ["targets", index]

        def problem(
            key: str, message: str, *, warning: bool = False, at: list[str | int] = where
        ) -> None:
            problems.append(
                Problem(file, _line(node, [*at, key]), _field([*at, key]), message, warning)
            )

        options = {**defaults, **{k: v for k, v in raw.items() if k in DEFAULT_OPTIONS}}
        line = _line(node, where)
        name = raw["name"]
        if name in names:
            problem("name", f"duplicate target name {name!r} (first on line {names[name]})")
        names.setdefault(name, line)

        new_base_raw = raw["new_base"]
        new_base: RepoRef | Family
        if isinstance(new_base_raw, dict) and "author" in new_base_raw:
            new_base = Family(
                new_base_raw["author"],
                new_base_raw["pattern"],
                new_base_raw.get("revision", "main"),
            )
        else:
            new_base = _ref(new_base_raw)

        output = raw["output"]
        template_error = _check_output_template(output)
        # A template gives the same repo only for the same new base (base and post
        # names are fixed per target, so they are part of the template's result too).
        same_output = (
            output,
            (_ref(raw["base"]), _ref(raw["post"]), new_base) if "{" in output else None,
        )
        if template_error:
            problem("output", template_error)
        elif same_output in outputs:
            first = outputs[same_output]
            problem("output", f"duplicate output {output!r} (first on line {first})")
        outputs.setdefault(same_output, _line(node, [*where, "output"]))

        alpha = float(options["alpha"])
        if not math.isfinite(alpha):
            problem("alpha", "must be a finite number")
        try:
            shard_size = parse_size(str(options["shard_size"]), "shard_size")
        except UsageError as e:
            problem("shard_size", str(e).split(": ", 1)[1])
            shard_size = DEFAULT_SHARD_SIZE

        card_template = None
        if options["card_template"]:
            card_template = (path.parent / options["card_template"]).resolve()
            if card_template not in checked_templates:
                checked_templates[card_template] = check_template(card_template)
            if checked_templates[card_template]:
                at: list[str | int] = where if "card_template" in raw else ["defaults"]
                problem("card_template", checked_templates[card_template] or "", at=at)

        target = Target(
            name=name,
            base=_ref(raw["base"]),
            post=_ref(raw["post"]),
            new_base=new_base,
            output=output,
            dtype=options["dtype"],
            alpha=alpha,
            vocab_policy=options["vocab_policy"],
            shard_size=shard_size,
            private=options["private"],
            publish=options["publish"],
            card_template=card_template,
            tags=tuple(options["tags"]),
            enabled=options["enabled"],
            line=line,
        )
        if not template_error:
            warning = llama_naming_warning(target)
            if warning:
                problem("output", warning, warning=True)
        targets.append(target)
    return targets, problems


def _check_output_template(output: str) -> str | None:
    """None if ``output`` is a usable repo id template, else why not."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(output) if f is not None]
    except ValueError as e:
        return f"bad template {output!r}: {e}"
    unknown = [f for f in fields if f not in OUTPUT_FIELDS]
    if unknown:
        allowed = ", ".join(f"{{{f}}}" for f in OUTPUT_FIELDS)
        return f"unknown placeholder {{{unknown[0]}}} (use {allowed})"
    sample = output.format(**{f: "x" for f in OUTPUT_FIELDS})
    owner, sep, name = sample.partition("/")
    if not sep or not owner or not name or "/" in name:
        return f"{output!r} must give a repo id like org/name"
    return None


def is_llama(repo: str) -> bool:
    return "llama" in repo.lower()


def llama_naming_warning(target: Target) -> str | None:
    """Llama licences require derived models' names to begin with "Llama"."""
    family = [target.base.repo, target.post.repo]
    if isinstance(target.new_base, RepoRef):
        family.append(target.new_base.repo)
    else:
        family.append(f"{target.new_base.author}/{target.new_base.pattern}")
    if not any(is_llama(repo) for repo in family):
        return None
    name = target.output.partition("/")[2]
    if name.lower().startswith("llama") or name.startswith("{new_base_name}"):
        return None
    return (
        f"Llama licence: the name of a model built with Llama must begin with 'Llama';"
        f" {name!r} does not"
    )
