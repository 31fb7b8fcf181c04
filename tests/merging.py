"""A merge straight into a folder, for tests: recipe and runtime options given in one."""

from paramdelta.engine.recipe import Recipe, Runtime
from paramdelta.engine.stages import MergeResult, merge_to_dir


def recipe_and_runtime(**options) -> tuple[Recipe, Runtime]:
    """Split keyword options into the two values; no progress bar unless asked."""
    recipe = Recipe(**{k: v for k, v in options.items() if k in Recipe._fields})
    given = {k: v for k, v in options.items() if k in Runtime._fields}
    unknown = set(options) - set(Recipe._fields) - set(Runtime._fields)
    assert not unknown, f"neither a recipe nor a runtime field: {unknown}"
    return recipe, Runtime(**({"progress": False} | given))


def merge(sources, out, *, overwrite=False, **options) -> MergeResult:
    return merge_to_dir(sources, out, *recipe_and_runtime(**options), overwrite=overwrite)
