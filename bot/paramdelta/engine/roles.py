"""The names of a merge's checkpoints: the new base, and each delta's post and base.

The first delta's checkpoints are "post" and "base" (a one-delta merge reads as
it always has, and the first post model gives the tokenizer and chat template);
delta i > 0 has "post[i]" and "base[i]", i its index in the recipe's list.
"""

from __future__ import annotations

ROLE_TITLES = {"base": "base", "post": "post", "new_base": "new base"}
ROLES = tuple(ROLE_TITLES)  # the three checkpoints of a one-delta merge, in the formula's order


def delta_roles(index: int) -> tuple[str, str]:
    """The (post, base) role names of delta ``index`` (0-based)."""
    return ("post", "base") if index == 0 else (f"post[{index}]", f"base[{index}]")


def merge_roles(deltas: int) -> tuple[str, ...]:
    """Every checkpoint of a merge of ``deltas`` deltas: each base and post, then the new base
    (for one delta, `ROLES`)."""
    pairs = (delta_roles(i) for i in range(deltas))
    return (*(role for post, base in pairs for role in (base, post)), "new_base")


def title(role: str) -> str:
    """How messages name a role: "new base", "post", "post[1]"."""
    return ROLE_TITLES.get(role, role)
