import textwrap
from pathlib import Path

import pytest

from paramdelta.cli import main
from paramdelta.engine.recipe import Recipe
from paramdelta.pipeline.watchlist import Family, RepoRef, WatchlistError, check, load

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
targets:
  - name: a
    base: org/base
    post: org/post@v1
    new_base: org/new
    output: me/out
"""


def _write(tmp_path, text):
    path = tmp_path / "watchlist.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _problems(tmp_path, text):
    path = _write(tmp_path, text)
    watchlist, problems = check(path)
    assert watchlist is None
    return [str(p).replace(f"{path}:", "") for p in problems]


def test_the_shipped_example_is_valid():
    watchlist = load(ROOT / "watchlist.yaml")
    llama, qwen = watchlist.targets
    assert llama.new_base == RepoRef("meta-llama/Llama-3.1-8B", "main")
    assert llama.publish == "pr" and llama.tags == ("chat",)
    assert qwen.new_base == Family("Qwen", "Qwen2*-7B")
    assert qwen.publish == "commit"
    assert qwen.output_repo("Qwen/Qwen2.5-7B") == "my-org/Qwen2.5-7B-Instruct-ParamDelta"
    assert watchlist.warnings == []


def test_defaults_apply_and_targets_override(tmp_path):
    path = _write(
        tmp_path,
        """\
        defaults: {alpha: 0.5, private: true, shard_size: 2GB}
        targets:
          - name: a
            base: org/base
            post: {repo: org/post, revision: v1}
            new_base: {repo: org/new, revision: dev}
            output: me/{new_base_name}-x
            alpha: 2
        """,
    )
    (target,) = load(path).targets
    assert target.recipe == Recipe(alpha=2.0, shard_size=2 * 10**9) and target.private is True
    assert target.post == RepoRef("org/post", "v1")
    assert target.new_base == RepoRef("org/new", "dev")
    assert target.output_repo("org/new") == "me/new-x"
    assert target.recipe.merged_fields() == {
        "alpha": 2.0,
        "weights": (),
        "dtype": "auto",
        "vocab_policy": "error",
    }


BAD = {
    "yaml syntax": (
        "targets: [\n  oops\n",
        ["3: invalid YAML: expected ',' or ']', but got '<stream end>'"],
    ),
    "duplicate yaml key": (
        GOOD.replace("    base: org/base\n", "    base: org/base\n    base: org/other\n"),
        ["4: invalid YAML: duplicate key 'base' (first on line 3)"],
    ),
    "not a mapping": ("- just\n- a list\n", ["1: must be a mapping, not list"]),
    "no targets": ("defaults: {}\n", ["1: 'targets' required"]),
    "empty targets": ("targets: []\n", ["1: targets: must not be empty"]),
    "missing field": (
        GOOD.replace("    output: me/out\n", ""),
        ["2: targets[0]: 'output' required"],
    ),
    "unknown key": (
        GOOD + "    dtpye: bfloat16\n",
        ["7: targets[0]: unknown key 'dtpye' (did you mean 'dtype'?)"],
    ),
    "unknown default": (
        "defaults:\n  colour: red\n" + GOOD,
        ["2: defaults: unknown key 'colour'"],
    ),
    "bad repo id": (
        GOOD.replace("org/base", "not a repo"),
        ["3: targets[0].base: 'not a repo' is not a Hub repo id like org/name[@revision]"],
    ),
    "new_base neither": (
        GOOD.replace("new_base: org/new", "new_base: {revision: main}"),
        ["5: targets[0].new_base: 'repo' or 'author'+'pattern' required"],
    ),
    "family without pattern": (
        GOOD.replace("new_base: org/new", "new_base: {author: Qwen}"),
        ["5: targets[0].new_base: 'pattern' required"],
    ),
    "bad enum": (
        GOOD + "    dtype: int8\n",
        ["7: targets[0].dtype: must be one of auto, bfloat16, float16, float32, not 'int8'"],
    ),
    "bad type": (
        GOOD + "    private: maybe\n",
        ["7: targets[0].private: must be a boolean, not str"],
    ),
    "bad shard size": (
        GOOD + "    shard_size: huge\n",
        ["7: targets[0].shard_size: 'huge' is not a size like 5GB or 512MiB"],
    ),
    "duplicate name": (
        GOOD + GOOD.replace("targets:\n", "").replace("me/out", "me/other"),
        ["7: targets[1].name: duplicate target name 'a' (first on line 2)"],
    ),
    "duplicate output": (
        GOOD + GOOD.replace("targets:\n", "").replace("name: a", "name: b"),
        ["11: targets[1].output: duplicate output 'me/out' (first on line 6)"],
    ),
    "unknown placeholder": (
        GOOD.replace("me/out", "me/{model}"),
        [
            "6: targets[0].output: unknown placeholder {model} (use {new_base_owner}, {new_base_name},"
            " {post_owner}, {post_name}, {base_owner}, {base_name})"
        ],
    ),
    "broken placeholder": (
        GOOD.replace("me/out", "'me/{post_name'"),
        ["6: targets[0].output: bad template 'me/{post_name': expected '}' before end of string"],
    ),
    "output not a repo id": (
        GOOD.replace("me/out", "justname"),
        ["6: targets[0].output: 'justname' must give a repo id like org/name"],
    ),
    "bad version": ("version: 2\n" + GOOD, ["1: version: must be 1, not 2"]),
    "empty file": ("", ["1: must be a mapping, not NoneType"]),
    # new_base is a oneOf of checkpoint (itself a oneOf of string and mapping) and
    # family: the error comes from the alternative the value evidently meant.
    "new_base bad repo id": (
        GOOD.replace("new_base: org/new", "new_base: not a repo"),
        ["5: targets[0].new_base: 'not a repo' is not a Hub repo id like org/name[@revision]"],
    ),
    "new_base empty revision": (
        GOOD.replace("new_base: org/new", "new_base: {repo: org/new, revision: ''}"),
        ["5: targets[0].new_base.revision: must not be empty"],
    ),
    "family key typo": (
        GOOD.replace("new_base: org/new", "new_base: {author: Qwen, pattern: 'Q*', revison: v}"),
        ["5: targets[0].new_base: unknown key 'revison' (did you mean 'revision'?)"],
    ),
    "new_base of no allowed type": (
        GOOD.replace("new_base: org/new", "new_base: 3"),
        ["5: targets[0].new_base: 'repo' or 'author'+'pattern' required"],
    ),
}


@pytest.mark.parametrize("kind", BAD)
def test_problems_name_line_and_field(tmp_path, kind):
    text, expected = BAD[kind]
    assert _problems(tmp_path, text) == expected


def test_card_template_is_checked_at_validate_time(tmp_path):
    (tmp_path / "hostile.j2").write_text("{{ ''.__class__.__mro__ }}")
    (tmp_path / "broken.j2").write_text("# {{ card.model_name }}\n{% if %}\n")
    text = (
        GOOD
        + "    card_template: hostile.j2\n"
        + GOOD.replace("targets:\n", "").replace("name: a", "name: b").replace("me/out", "me/b")
        + "    card_template: broken.j2\n    alpha: .nan\n"
    )
    problems = _problems(tmp_path, text)
    assert problems == [
        f"7: targets[0].card_template: {tmp_path / 'hostile.j2'}: template error:"
        " access to attribute '__class__' of 'str' object is unsafe.",
        "13: targets[1].card_template: "
        f"{tmp_path / 'broken.j2'}:2: template syntax error: Expected an expression,"
        " got 'end of statement block'",
        "14: targets[1].alpha: must be a finite number",
    ]


def test_a_broken_default_is_reported_once_where_it_is_set(tmp_path):
    (tmp_path / "broken.j2").write_text("{% if %}\n")
    second = GOOD.replace("targets:\n", "").replace("name: a", "name: b").replace("me/out", "me/b")
    text = "defaults: {alpha: .inf, card_template: broken.j2}\n" + GOOD + second
    assert _problems(tmp_path, text) == [
        "1: defaults.alpha: must be a finite number",
        f"1: defaults.card_template: {tmp_path / 'broken.j2'}:1: template syntax error:"
        " Expected an expression, got 'end of statement block'",
    ]


def test_missing_card_template(tmp_path):
    problems = _problems(tmp_path, GOOD + "    card_template: nope.j2\n")
    assert problems == [
        f"7: targets[0].card_template: cannot read {tmp_path / 'nope.j2'}: No such file or directory"
    ]


def test_llama_outputs_must_begin_with_llama(tmp_path):
    path = _write(
        tmp_path,
        """\
        targets:
          - name: a
            base: meta-llama/Meta-Llama-3-8B
            post: meta-llama/Meta-Llama-3-8B-Instruct
            new_base: meta-llama/Llama-3.1-8B
            output: me/My-Instruct
        """,
    )
    watchlist = load(path)
    assert [str(w) for w in watchlist.warnings] == [
        f"{path}:6: warning: targets[0].output: Llama licence: the name of a model built with"
        " Llama must begin with 'Llama'; 'My-Instruct' does not"
    ]


def test_unreadable_file(tmp_path):
    _, problems = check(tmp_path / "nope.yaml")
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'nope.yaml'}:1: cannot read: No such file or directory"
    ]


def test_load_raises_with_the_first_problem(tmp_path):
    path = _write(tmp_path, "targets: []\nversion: 3\n")
    with pytest.raises(WatchlistError) as e:
        load(path)
    assert str(e.value) == (
        f"{path}:1: targets: must not be empty (and 1 more: run `paramdelta watchlist validate`)"
    )
    assert e.value.exit_code == 2


def test_validate_command(tmp_path, capsys):
    good = _write(tmp_path, GOOD)
    assert main(["watchlist", "validate", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: valid, 1 target (1 enabled)\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "    dtpye: x\n    alpha: nope\n")
    assert main(["watchlist", "validate", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{bad}:7: targets[0]: unknown key 'dtpye' (did you mean 'dtype'?)",
        f"{bad}:8: targets[0].alpha: must be a number, not str",
    ]


@pytest.mark.parametrize(
    ("line", "mode"),
    [("", "auto"), ("check: off", "off"), ("check: on", "on"), ("check: 'off'", "off")],
)
def test_the_check_is_auto_unless_a_target_says_otherwise(tmp_path, line, mode):
    (target,) = load(_write(tmp_path, GOOD + (f"    {line}\n" if line else ""))).targets
    assert target.check == mode  # a bare YAML on/off is a boolean: read as the word
    assert target.perplexity_factor == 3.0
    assert target.recipe == Recipe()  # the check does not change the merged bytes


def test_check_settings_are_validated(tmp_path):
    text = "defaults: {perplexity_factor: 1.5}\n" + GOOD + "    check: maybe\n"
    assert _problems(tmp_path, text) == ["8: targets[0].check: 'maybe' is not auto, on or off"]
    (target,) = load(_write(tmp_path, "defaults: {perplexity_factor: 1.5}\n" + GOOD)).targets
    assert target.perplexity_factor == 1.5
    for value, problem in [
        ("0", "must be a finite number above 0"),
        (".inf", "must be a finite number above 0"),
        ("x", "must be a number, not str"),
    ]:
        assert _problems(tmp_path, GOOD + f"    perplexity_factor: {value}\n") == [
            f"7: targets[0].perplexity_factor: {problem}"
        ]


LLAMA_TARGET = """\
  - name: llama
    base: meta-llama/Meta-Llama-3-8B
    post: meta-llama/Meta-Llama-3-8B-Instruct
    new_base: meta-llama/Llama-3.1-8B
    output: me/My-Instruct
"""


def test_validate_reports_every_problem_in_one_pass_warnings_included(tmp_path, capsys):
    """A schema error in one target does not hide the rules the others break, nor warnings."""
    text = (
        GOOD
        + "    dtpye: x\n"
        + LLAMA_TARGET
        + GOOD.replace("targets:\n", "").replace("name: a", "name: llama")
        + "defaults: {alpha: .inf, colour: red}\n"
    )
    path = _write(tmp_path, text)
    assert main(["watchlist", "validate", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:7: targets[0]: unknown key 'dtpye' (did you mean 'dtype'?)",
        f"{path}:12: warning: targets[1].output: Llama licence: the name of a model built with"
        " Llama must begin with 'Llama'; 'My-Instruct' does not",
        f"{path}:13: targets[2].name: duplicate target name 'llama' (first on line 8)",
        f"{path}:18: defaults: unknown key 'colour'",
        f"{path}:18: defaults.alpha: must be a finite number",
    ]


def test_validate_shows_the_warnings_of_a_valid_file(tmp_path, capsys):
    path = _write(tmp_path, "targets:\n" + LLAMA_TARGET)
    assert main(["watchlist", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{path}: valid, 1 target (1 enabled), 1 warning\n"
    assert captured.err.startswith(f"{path}:6: warning: targets[0].output: Llama licence")


def test_the_schema_offers_the_recipe_choices_the_engine_has():
    import json
    from importlib import resources

    from paramdelta.engine.recipe import DTYPE_CHOICES, VOCAB_POLICIES

    schema = json.loads(
        resources.files("paramdelta").joinpath("schemas/watchlist.schema.json").read_text()
    )
    options = schema["$defs"]["options"]["properties"]
    assert options["dtype"]["enum"] == list(DTYPE_CHOICES)
    assert options["vocab_policy"]["enum"] == list(VOCAB_POLICIES)
    # every recipe field can be set per target (the weights in `deltas`, each with its delta)
    assert set(Recipe._fields) - {"weights"} <= set(options)


SEVERAL = """\
defaults: {alpha: 0.5}
targets:
  - name: mix
    deltas:
      - {post: org/instruct@v2, base: org/base, weight: 0.7}
      - post: {repo: org/math, revision: r1}
        base: org/base-math
        weight: -0.3
      - {post: org/code, base: org/base}
    new_base: org/new
    output: me/{new_base_name}-{post_name}
"""


def test_a_target_may_sum_several_deltas(tmp_path):
    (target,) = load(_write(tmp_path, SEVERAL)).targets
    # The default alpha is one delta's: each delta here has its own weight (1 when not given).
    assert target.recipe == Recipe(weights=(0.7, -0.3, 1.0))
    assert (target.base, target.post) == (RepoRef("org/base"), RepoRef("org/instruct", "v2"))
    assert target.delta_refs() == {
        "base": RepoRef("org/base"),
        "post": RepoRef("org/instruct", "v2"),
        "base[1]": RepoRef("org/base-math"),
        "post[1]": RepoRef("org/math", "r1"),
        "base[2]": RepoRef("org/base"),
        "post[2]": RepoRef("org/code"),
    }
    assert target.output_repo("org/new") == "me/new-instruct"  # the first delta's names


def test_a_list_of_one_delta_is_the_one_delta_target(tmp_path):
    one = GOOD.replace("    base: org/base\n    post: org/post@v1\n", "").replace(
        "    new_base:",
        "    deltas: [{post: org/post@v1, base: org/base, weight: 0.25}]\n    new_base:",
    )
    (target,) = load(_write(tmp_path, one)).targets
    assert target.recipe == Recipe(alpha=0.25) and target.deltas == ()
    assert (target.base, target.post) == (RepoRef("org/base"), RepoRef("org/post", "v1"))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ("    new_base: org/new\n", "    new_base: org/new\n    base: org/base\n"),
            "3: targets[0]: give 'base' and 'post' (and optional 'alpha'), or 'deltas' instead"
            " of all three",
        ),
        (
            ("    new_base: org/new\n", "    new_base: org/new\n    alpha: 2\n"),
            "3: targets[0]: give 'base' and 'post' (and optional 'alpha'), or 'deltas' instead"
            " of all three",
        ),
        (
            ("weight: 0.7", "weight: .nan"),
            "5: targets[0].deltas[0].weight: must be a finite number",
        ),
        (
            ("weight: -0.3", "weight: heavy"),
            "8: targets[0].deltas[1].weight: must be a number, not str",
        ),
        (
            ("base: org/base-math", "base: not a repo"),
            "7: targets[0].deltas[1].base: 'not a repo' is not a Hub repo id like org/name[@revision]",
        ),
        (
            ("        weight: -0.3\n", "        wieght: -0.3\n"),
            "8: targets[0].deltas[1]: unknown key 'wieght' (did you mean 'weight'?)",
        ),
        (
            ("      - {post: org/code, base: org/base}\n", "      - {post: org/code}\n"),
            "9: targets[0].deltas[2]: 'base' required",
        ),
    ],
)
def test_several_delta_problems_name_line_and_field(tmp_path, change, problem):
    assert _problems(tmp_path, SEVERAL.replace(*change)) == [problem]


def test_an_empty_delta_list_is_refused(tmp_path):
    text = (
        SEVERAL.split("    deltas:")[0]
        + "    deltas: []\n    new_base: org/new\n    output: me/o\n"
    )
    assert _problems(tmp_path, text) == ["4: targets[0].deltas: must not be empty"]


def test_the_two_delta_target_in_the_docs_is_valid(tmp_path):
    text = (ROOT / "docs" / "recipes.md").read_text()
    block = text.split("<!-- docs: two-delta-target -->\n```yaml\n")[1].split("```")[0]
    (target,) = load(_write(tmp_path, block)).targets
    assert target.recipe.weights == (1.0, 0.5)
    assert target.delta_refs()["post[1]"] == RepoRef("example-org/Llama-3-8B-Math", "v2")
