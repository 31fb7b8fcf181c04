"""A merge straight into a folder, for tests: recipe and runtime options given in one."""

from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.stages import MergeResult, merge_to_dir

# Two MoE layers of 8 experts (name -> shape): small tensors, which the engine merges a
# layer's worth of one shape at a time (`engine.batches`).
EXPERTS = {
    f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight": (32, 16)
    if proj == "down_proj"
    else (16, 32)
    for layer in (0, 1)
    for e in range(8)
    for proj in ("down_proj", "gate_proj", "up_proj")
}


def recipe_and_runtime(**options) -> tuple[Recipe, Runtime]:
    """Split keyword options into the two values; no progress bar unless asked."""
    recipe = Recipe(**{k: v for k, v in options.items() if k in Recipe._fields})
    given = {k: v for k, v in options.items() if k in Runtime._fields}
    unknown = set(options) - set(Recipe._fields) - set(Runtime._fields)
    assert not unknown, f"neither a recipe nor a runtime field: {unknown}"
    return recipe, Runtime(**({"progress": False} | given))


def merge(sources, out, *, overwrite=False, **options) -> MergeResult:
    return merge_to_dir(sources, out, *recipe_and_runtime(**options), overwrite=overwrite)


def two_deltas(root) -> dict:
    """Five checkpoints of one architecture, by role: a trio, and a second delta
    (``post[1]`` trained from ``base[1]``) from another seed."""
    from paramdelta.testing.checkpoints import make_trio

    first, second = make_trio(root / "first"), make_trio(root / "second", seed=7)
    return first | {"post[1]": second["post"], "base[1]": second["base"]}


def several_reference(inputs, terms, dtype=None) -> dict:
    """The issue's formula, literally: ``acc = new.float()``, then for each (post, base,
    weight) role triple ``acc = acc + w * (post.float() - base.float())``, rounded once."""
    out = {}
    for name, new in inputs["new_base"].items():
        acc = new.float()
        for post, base, weight in terms:
            acc = acc + weight * (inputs[post][name].float() - inputs[base][name].float())
        out[name] = acc.to(dtype or new.dtype)
    return out
