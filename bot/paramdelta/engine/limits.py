"""Caps on what an upstream checkpoint can make the bot read, parse or hold in memory.

Sizes come from the Hub's listing (or the local file system) and are checked
before a byte is read, so a listing that claims a petabyte-sized config.json is
an error, not a MemoryError. Each cap is several times what the largest public
checkpoints need (noted beside it); `README.md` lists them.
"""

from __future__ import annotations

from paramdelta.errors import CheckpointError

MAX_CONFIG_BYTES = 1 << 20  # config.json, generation_config.json: real ones are 1-50 KB
MAX_INDEX_BYTES = 32 << 20  # model.safetensors.index.json: ~9 MB for DeepSeek-V3's 91k tensors
MAX_DONATED_BYTES = 128 << 20  # tokenizer and other copied files: Gemma 3's tokenizer.json is 33 MB
MAX_SHARDS = 4096  # DeepSeek-V3 has 163, Llama 3.1 405B 191
MAX_TOTAL_HEADER_BYTES = (
    64 << 20
)  # all safetensors headers of one checkpoint: ~11 MB for DeepSeek-V3
MAX_JSON_DEPTH = 64  # configs nest 3-4 levels (text_config.rope_scaling)


def check_size(size: int, limit: int, where: str, what: str = "") -> int:
    """``size`` if it is within ``limit``, else a CheckpointError naming ``where``."""
    if size > limit:
        kind = f" (the limit for {what})" if what else ""
        raise CheckpointError(f"{where}: {size} bytes, more than {limit}{kind}")
    return size


def json_depth(value: object) -> int:
    """How deep lists and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        # Only containers nest: an index's ~95k shard names are not pushed one by one.
        stack.extend([(c, depth + 1) for c in children if isinstance(c, (dict, list))])
    return deepest
