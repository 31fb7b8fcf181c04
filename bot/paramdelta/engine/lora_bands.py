"""A LoRA delta computed where it is merged: ``scale * B @ A``, one chunk at a time.

Apart from `paramdelta.engine.adapter` (which reads and plans an adapter without
torch), so that planning imports no torch.
"""

from __future__ import annotations

import torch

from paramdelta.engine.adapter import LoraRef
from paramdelta.engine.checkpoint import Source
from paramdelta.engine.dtypes import ITEMSIZE
from paramdelta.engine.kernel import TORCH_DTYPES
from paramdelta.engine.safetensors_format import TensorEntry


class LoraBands:
    """One worker's computation of LoRA chunks; keeps the last tensor's A in float32."""

    def __init__(self) -> None:
        self._key: LoraRef | None = None
        self._a = torch.empty(0)

    @staticmethod
    def _rows(source: Source, file: str, entry: TensorEntry, rows: range) -> torch.Tensor:
        """Rows of a 2-D tensor, widened to float32."""
        cols = entry.shape[1]
        size = ITEMSIZE[entry.dtype]
        data = source.read(file, entry.offset + rows.start * cols * size, len(rows) * cols * size)
        values = torch.frombuffer(bytearray(data), dtype=TORCH_DTYPES[entry.dtype])
        return values.view(len(rows), cols).float()

    def fill(self, source: Source, lora: LoraRef, first: int, view: memoryview) -> None:
        """Elements ``first ..`` of ``scale * B @ A`` (flattened) into ``view``, as float32."""
        if self._key != lora:
            self._a = self._rows(source, lora.file, lora.a, range(lora.a.shape[0]))
            self._key = lora
        width = lora.shape[1]
        out = torch.frombuffer(view, dtype=torch.float32)
        end = first + out.numel()
        lo, hi = first // width, -(-end // width)  # the rows the chunk touches
        b = self._rows(source, lora.file, lora.b, range(lo, hi))
        inner_lo, inner_hi = -(-first // width), end // width  # rows wholly inside the chunk
        if inner_lo < inner_hi:
            whole = out[inner_lo * width - first : inner_hi * width - first]
            torch.mm(b[inner_lo - lo : inner_hi - lo], self._a, out=whole.view(-1, width))
        for row in sorted({lo, hi - 1}):
            if inner_lo <= row < inner_hi:
                continue  # whole, computed above
            # A row the chunk starts or ends inside: computed whole, the chunk's part kept.
            start, stop = max(first, row * width), min(end, (row + 1) * width)
            values = b[row - lo : row - lo + 1] @ self._a
            out[start - first : stop - first] = values.view(-1)[
                start - row * width : stop - row * width
            ]
        out.mul_(lora.scale)
