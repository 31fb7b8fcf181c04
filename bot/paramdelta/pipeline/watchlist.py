"""watchlist.yaml: load, validate against the shipped JSON Schema, report errors by line.

The schema (schemas/watchlist.schema.json) is the single definition of the
format: editors use it for completion, and every structural error here comes
from it. This module turns jsonschema's errors into one line each naming the
file, the line and the field, then checks what a schema cannot: duplicate
names and outputs, output templates, card templates, and licence naming rules.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
import string
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import yaml
from jsonschema.exceptions import relevance

from paramdelta.engine.recipe import Recipe, parse_size
from paramdelta.engine.roles import delta_roles
from paramdelta.errors import UsageError
from paramdelta.pipeline.check_rules import DEFAULT_PERPLEXITY_FACTOR
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
    **Recipe()._asdict(),  # a target's recipe: the fields of `Recipe`, its defaults
    "private": False,
    "publish": "commit",
    "card_template": None,
    "tags": [],
    "enabled": True,
    "check": "auto",
    "perplexity_factor": DEFAULT_PERPLEXITY_FACTOR,
    "legs": 1,
}
MAX_REPORTED = 50

JsonPath = Sequence[str | int]


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


class DeltaRef(NamedTuple):
    """One term ``weight * (post - base)`` of a several-delta target."""

    post: RepoRef
    base: RepoRef
    weight: float = 1.0


@dataclass(frozen=True)
class Target:
    """A watchlist target. ``base`` and ``post`` are the (first) delta's; a target with
    several deltas lists them all in ``deltas`` (their weights are the recipe's)."""

    name: str
    base: RepoRef
    post: RepoRef
    new_base: RepoRef | Family
    output: str  # may hold {placeholders}, see OUTPUT_FIELDS
    recipe: Recipe = Recipe()
    deltas: tuple[DeltaRef, ...] = ()
    private: bool = False
    publish: str = "commit"
    card_template: Path | None = None
    tags: tuple[str, ...] = ()
    enabled: bool = True
    check: str = "auto"  # the pre-publish check: auto | on | off (see paramdelta.pipeline.check)
    perplexity_factor: float = DEFAULT_PERPLEXITY_FACTOR
    legs: int = 1  # fan-out: runners that each merge a slice of the output (docs/fan-out.md)

    def output_repo(self, new_base_repo: str) -> str:
        """The output repo id for a resolved new base."""
        return self.output.format(**_name_fields(self.base.repo, self.post.repo, new_base_repo))

    def delta_refs(self) -> dict[str, RepoRef]:
        """Every checkpoint but the new base, by role: each delta's base and post, in order."""
        pairs = [(d.base, d.post) for d in self.deltas] or [(self.base, self.post)]
        refs: dict[str, RepoRef] = {}
        for i, (base, post) in enumerate(pairs):
            post_role, base_role = delta_roles(i)
            refs |= {base_role: base, post_role: post}
        return refs


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


# -- loading -----------------------------------------------------------------------


def load(path: str | Path) -> Watchlist:
    """Load and fully validate a watchlist; WatchlistError lists every problem."""
    watchlist, problems = check(path)
    if watchlist is None:
        raise WatchlistError([p for p in problems if not p.warning])
    return watchlist


def check(path: str | Path) -> tuple[Watchlist | None, list[Problem]]:
    """Validate in one pass; the watchlist (None if invalid) and every problem, warnings too.

    The rules a schema cannot express run on every target the schema accepts, so
    a file with a typo in one target still has its other targets checked.
    """
    path = Path(path)
    try:
        doc, root = _parse(path)
    except WatchlistError as e:
        return None, e.problems
    report = _Report(str(path), root)
    rejected = _check_schema(doc, report)
    targets = {} if rejected is None else _targets(doc, path.parent, report, rejected)
    errors, warnings = report.errors(), report.warnings()
    if errors:
        return None, sorted([*errors, *warnings])
    return Watchlist(path, list(targets.values()), warnings), warnings


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


def _parse(path: Path) -> tuple[Any, yaml.Node | None]:
    """The document, and the node tree it is built from for line numbers: one parse.

    A file that cannot be read or parsed raises WatchlistError.
    """
    file = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise WatchlistError([Problem(file, 1, "", f"cannot read: {reason}")]) from e
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        return (None if root is None else loader.construct_document(root)), root
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e)
        raise WatchlistError([Problem(file, line, "", f"invalid YAML: {problem}")]) from e
    finally:
        loader.dispose()


def _node_at(root: yaml.Node, path: JsonPath) -> yaml.Node:
    """The YAML node at a JSON path, or the deepest one on the way that exists."""
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next((value for key, value in node.value if key.value == part), None)
            if found is None:
                return node
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _field(path: JsonPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class _Report:
    """The problems found in one file, each at the line of the YAML it is about."""

    file: str
    root: yaml.Node | None
    problems: list[Problem] = field(default_factory=list)

    def line(self, path: JsonPath, key: str | None = None) -> int:
        """The line of the value at ``path``, or of its ``key`` if that is given."""
        if self.root is None:
            return 1
        node = _node_at(self.root, path)
        if key is not None and isinstance(node, yaml.MappingNode):
            node = next((k for k, _ in node.value if k.value == key), node)
        return node.start_mark.line + 1

    def add(
        self, path: JsonPath, message: str, *, key: str | None = None, warning: bool = False
    ) -> None:
        self.problems.append(
            Problem(self.file, self.line(path, key), _field(path), message, warning)
        )

    def errors(self) -> list[Problem]:
        # A rule broken in the defaults is found once for each target inheriting them.
        return sorted({p for p in self.problems if not p.warning})[:MAX_REPORTED]

    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.warning]


# -- schema errors -> friendly lines ----------------------------------------------

_ALTERNATIVES = ("oneOf", "anyOf")
_UNKNOWN_KEY = ("additionalProperties", "unevaluatedProperties")
_TYPE_NAMES = {"object": "a mapping", "array": "a list", "string": "a string"}


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


class _Rejected(NamedTuple):
    """What the schema refused: these targets and these defaults are left out of the rules."""

    targets: set[int]
    defaults: set[str]


def _check_schema(doc: Any, report: _Report) -> _Rejected | None:
    """Report every schema error; None if the document's shape leaves no target to check."""
    rejected = _Rejected(set(), set())
    usable = True
    for error in _validator().iter_errors(doc):
        error = _meant(error)
        if error.validator in _UNKNOWN_KEY:
            _report_unknown_key(error, report)
        else:
            report.add(error.absolute_path, _message(error))
        where = list(error.absolute_path)
        if len(where) >= 2 and where[0] == "targets" and isinstance(where[1], int):
            rejected.targets.add(where[1])
        elif len(where) >= 2 and where[0] == "defaults":
            rejected.defaults.add(str(where[1]))
        elif where == ["defaults"] and error.validator in _UNKNOWN_KEY:
            pass  # an unknown default is reported, and only known ones are ever used
        else:  # the document, its targets list, or the defaults as a whole
            usable = False
    return rejected if usable else None


def _meant(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For a oneOf or anyOf, the error of the alternative the author evidently meant.

    That alternative accepts the value's type and, for a mapping, knows the most of
    its keys, one at least (jsonschema's best_match cannot tell: it ranks errors, not
    how well alternatives fit). Without one such alternative, ``error`` and its
    x-message explain. Of the meant alternative's errors, jsonschema's relevance
    picks the one to show.
    """
    if error.validator not in _ALTERNATIVES or not error.context:
        return error
    fits = [
        (_fit(schema, errors, error.instance), errors) for schema, errors in _alternatives(error)
    ]
    best = max(fit for fit, _ in fits)
    meant = [errors for fit, errors in fits if fit == best]
    if best == 0 or len(meant) > 1:
        return error
    return _meant(max(meant[0], key=relevance))


def _alternatives(
    error: jsonschema.ValidationError,
) -> Iterator[tuple[dict[str, Any], list[jsonschema.ValidationError]]]:
    """Each alternative's schema and errors; a nested oneOf's alternatives in its place."""
    grouped = itertools.groupby(error.context, key=lambda sub: sub.relative_schema_path[0])
    for index, group in grouped:
        errors = list(group)
        if len(errors) == 1 and errors[0].validator in _ALTERNATIVES and not errors[0].path:
            yield from _alternatives(errors[0])
        else:
            yield error.schema[error.validator][index], errors


def _fit(schema: dict[str, Any], errors: list[jsonschema.ValidationError], instance: Any) -> int:
    """0 for an alternative of another type, else how many of a mapping's keys it knows."""
    if any(e.validator == "type" and not e.path for e in errors):
        return 0
    if isinstance(instance, dict):
        return len(instance.keys() & _defined_keys(schema))
    return 1


def _report_unknown_key(error: jsonschema.ValidationError, report: _Report) -> None:
    known = _defined_keys(error.schema)
    unknown = [key for key in error.instance if key not in known]
    if not unknown:
        return  # unevaluatedProperties also lists keys whose own rule failed: that error says why
    hint = difflib.get_close_matches(str(unknown[0]), sorted(known), n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    message = f"unknown key {unknown[0]!r}{suggestion}"
    report.add(error.absolute_path, message, key=str(unknown[0]))


def _defined_keys(schema: dict[str, Any]) -> set[str]:
    """The keys an object schema defines itself or takes from the schemas it extends."""
    extended = list(schema.get("allOf", []))
    if "$ref" in schema:  # the schema's own refs are all to #/$defs/<name>
        extended.append(_validator().schema["$defs"][schema["$ref"].rpartition("/")[2]])
    return set(schema.get("properties", {})).union(*map(_defined_keys, extended))


def _message(error: jsonschema.ValidationError) -> str:
    kind, wanted, instance = error.validator, error.validator_value, error.instance
    if kind in _ALTERNATIVES:  # no one alternative stands out
        return str(error.schema.get("x-message", "does not match any allowed form"))
    if kind == "required":  # one error per missing key: name them all, once
        return f"{', '.join(repr(k) for k in wanted if k not in instance)} required"
    if kind == "type":
        expected = _TYPE_NAMES.get(str(wanted), f"a {wanted}")
        return f"must be {expected}, not {type(instance).__name__}"
    if "x-message" in error.schema:
        return f"{instance!r} {error.schema['x-message']}"[:200]
    if kind == "enum":
        return f"must be one of {', '.join(map(str, wanted))}, not {instance!r}"
    if kind == "const":
        return f"must be {wanted!r}, not {instance!r}"
    if kind in ("minItems", "minLength"):
        return "must not be empty"
    return str(error.message)


# -- targets and the rules a schema cannot express ---------------------------------


def _targets(
    doc: dict[str, Any], folder: Path, report: _Report, rejected: _Rejected
) -> dict[int, Target]:
    """The targets the schema accepts, by index, reporting every rule they break."""
    given = {
        k: v
        for k, v in doc.get("defaults", {}).items()
        if k in DEFAULT_OPTIONS and k not in rejected.defaults
    }
    defaults = {**DEFAULT_OPTIONS, **given}
    raws = doc["targets"]
    targets = {
        index: _target(raw, _options(raw, defaults, index, folder, report))
        for index, raw in enumerate(raws)
        if index not in rejected.targets
    }
    names = [(index, t.name, t.name) for index, t in targets.items()]
    _report_repeats(report, "name", "target name", names)
    usable = _check_output_templates(targets, report)
    outputs = [(i, targets[i].output, _output_identity(targets[i])) for i in usable]
    _report_repeats(report, "output", "output", outputs)
    _warn_llama_names(targets, usable, report)
    _check_card_templates(targets, raws, report)
    return targets


def _set_at(raw: dict[str, Any], index: int, key: str) -> list[str | int]:
    """Where a target's option is set: in the target, or in the defaults it inherits."""
    return ["targets", index, key] if key in raw else ["defaults", key]


def _options(
    raw: dict[str, Any], defaults: dict[str, Any], index: int, folder: Path, report: _Report
) -> dict[str, Any]:
    """A target's options, its own over the defaults, as Target's fields."""
    options = {**defaults, **{k: v for k, v in raw.items() if k in DEFAULT_OPTIONS}}
    if "deltas" in raw:  # each delta has its weight; `alpha` (a default too) is one delta's
        options["alpha"] = 1.0
        options["weights"] = _weights(raw["deltas"], index, report)
    for key, convert in (
        ("alpha", _alpha),
        ("shard_size", _shard_size),
        ("perplexity_factor", _perplexity_factor),
    ):
        try:
            options[key] = convert(options[key])
        except ValueError as e:
            report.add(_set_at(raw, index, key), str(e))
            options[key] = convert(DEFAULT_OPTIONS[key])
    if isinstance(options["check"], bool):  # YAML 1.1 reads a bare on/off as a boolean
        options["check"] = "on" if options["check"] else "off"
    if options["card_template"] is not None:
        try:
            options["card_template"] = _card_template(options["card_template"], folder)
        except ValueError as e:
            report.add(_set_at(raw, index, "card_template"), str(e))
            options["card_template"] = None
    options["tags"] = tuple(options["tags"])
    return options


def _card_template(value: str, folder: Path) -> Path:
    """The template's real path, which must lie inside the watchlist's folder.

    The card is published: a template outside the repository (``../../``,
    ``/proc/self/environ``, a symlink leading out) would publish what it reads.
    """
    relative = Path(value)
    if relative.is_absolute():
        raise ValueError(f"{value!r} must be a path relative to the watchlist, not absolute")
    if ".." in relative.parts:
        raise ValueError(f"{value!r} must not leave the watchlist's folder ('..')")
    root = folder.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{value!r} leads out of the watchlist's folder (through a symlink)")
    return path


def _weights(deltas: list[dict[str, Any]], index: int, report: _Report) -> tuple[float, ...]:
    """The deltas' weights (one delta: its weight becomes ``alpha``, see `_target`)."""
    weights = []
    for i, delta in enumerate(deltas):
        try:
            weights.append(_alpha(delta.get("weight", 1.0)))
        except ValueError as e:
            report.add(["targets", index, "deltas", i, "weight"], str(e))
            weights.append(1.0)
    return tuple(weights)


def _alpha(value: float) -> float:
    if not math.isfinite(value):  # .nan and .inf are YAML numbers
        raise ValueError("must be a finite number")
    return float(value)


def _perplexity_factor(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a finite number above 0")
    return float(value)


def _shard_size(value: str | int) -> int:
    if isinstance(value, int):  # the default, already a number of bytes
        return value
    try:
        return parse_size(value, "shard_size")
    except UsageError as e:
        raise ValueError(str(e).removeprefix("shard_size: ")) from e


def _target(raw: dict[str, Any], options: dict[str, Any]) -> Target:
    recipe = Recipe(**{key: options.pop(key) for key in Recipe._fields})
    deltas = tuple(
        DeltaRef(_ref(d["post"]), _ref(d["base"]), w)
        for d, w in zip(raw.get("deltas", ()), recipe.weights, strict=True)
    )
    first = deltas[0] if deltas else DeltaRef(_ref(raw["post"]), _ref(raw["base"]), recipe.alpha)
    if len(deltas) == 1:  # a list of one is the one-delta target
        recipe, deltas = recipe._replace(alpha=first.weight, weights=()), ()
    return Target(
        name=raw["name"],
        base=first.base,
        post=first.post,
        new_base=_new_base(raw["new_base"]),
        output=raw["output"],
        recipe=recipe,
        deltas=deltas,
        **options,
    )


def _ref(value: str | dict[str, str]) -> RepoRef:
    if isinstance(value, str):
        return RepoRef(*parse_spec(value))  # the same `org/name[@rev]` as the command line
    return RepoRef(value["repo"], value.get("revision", "main"))


def _new_base(value: str | dict[str, str]) -> RepoRef | Family:
    if isinstance(value, dict) and "author" in value:
        return Family(value["author"], value["pattern"], value.get("revision", "main"))
    return _ref(value)


def _report_repeats(
    report: _Report, key: str, what: str, found: Iterable[tuple[int, str, Hashable]]
) -> None:
    """Report each (target index, value, identity) whose identity an earlier one has."""
    first_line: dict[Hashable, int] = {}
    for index, value, identity in found:
        path: JsonPath = ("targets", index, key)
        if identity in first_line:
            report.add(path, f"duplicate {what} {value!r} (first on line {first_line[identity]})")
        else:
            first_line[identity] = report.line(path)


def _output_identity(target: Target) -> Hashable:
    """What decides the output repo: the template, and what fills it in."""
    if "{" not in target.output:
        return target.output
    # The same template gives the same repo only from the same repos (base and post
    # are fixed per target, so they are part of its result too).
    return (target.output, tuple(target.delta_refs().values()), target.new_base)


def _check_output_templates(targets: Mapping[int, Target], report: _Report) -> list[int]:
    """Report unusable output templates; the indexes of the targets with usable ones."""
    usable = []
    for index, target in targets.items():
        error = _output_template_error(target.output)
        if error:
            report.add(["targets", index, "output"], error)
        else:
            usable.append(index)
    return usable


def _output_template_error(output: str) -> str | None:
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


def _warn_llama_names(targets: Mapping[int, Target], among: Iterable[int], report: _Report) -> None:
    for index in among:
        warning = llama_naming_warning(targets[index])
        if warning:
            report.add(["targets", index, "output"], warning, warning=True)


def llama_naming_warning(target: Target) -> str | None:
    """Llama licences require derived models' names to begin with "Llama"."""
    new_base = target.new_base
    family = [
        *(ref.repo for ref in target.delta_refs().values()),
        new_base.repo if isinstance(new_base, RepoRef) else f"{new_base.author}/{new_base.pattern}",
    ]
    if not any("llama" in repo.lower() for repo in family):
        return None
    name = target.output.partition("/")[2]
    if name.lower().startswith("llama") or name.startswith("{new_base_name}"):
        return None
    return (
        f"Llama licence: the name of a model built with Llama must begin with 'Llama';"
        f" {name!r} does not"
    )


def _check_card_templates(
    targets: Mapping[int, Target], raws: Sequence[dict[str, Any]], report: _Report
) -> None:
    """Render each card template once against a sample; report it where it is set."""
    verdicts: dict[Path, str | None] = {}
    for index, target in targets.items():
        template = target.card_template
        if template is None:
            continue
        if template not in verdicts:
            # card brings in Jinja and huggingface_hub: only for watchlists that need it
            from paramdelta.pipeline.lineage import sample_record
            from paramdelta.rendering.card import check_template

            verdicts[template] = check_template(template, sample_record())
        error = verdicts[template]
        if error:
            report.add(_set_at(raws[index], index, "card_template"), error)
