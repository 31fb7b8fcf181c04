"""The delta report's per-layer chart, a PNG committed beside the card (stdlib only).

Two panels, one column per layer group in model order (embeddings, layer 0, 1,
..., the rest, the LM head). Above: the norm of post - base (blue) and of new
base - base (orange), both scaled to the largest of either. Below: their cosine,
on a fixed scale from -1 (bottom) to 1 (top), around a line at 0; a column
that is not finite is drawn red from top to bottom. The card's table has the
numbers; the chart shows where along the model they change.

A chart needs no plotting library: it is bars, drawn into an RGB pixel buffer
and written as an 8-bit PNG (zlib and CRC from the standard library).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

FILENAME = "paramdelta-delta.png"
POST_COLOUR = (31, 119, 180)
UPDATE_COLOUR = (255, 127, 14)
COSINE_COLOUR = (44, 160, 44)
BAD_COLOUR = (214, 39, 40)
AXIS_COLOUR = (120, 120, 120)
GRID_COLOUR = (225, 225, 225)
BACKGROUND = (255, 255, 255)
MARGIN = 8
NORM_HEIGHT = 120
COSINE_HEIGHT = 60
GAP = 10


class Canvas:
    """An RGB image held as rows of bytes."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(BACKGROUND) * width) for _ in range(height)]

    def fill(self, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
        """Paint the pixels with x0 <= x < x1 and y0 <= y < y1 (clipped to the image)."""
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        span = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            self.rows[y][3 * x0 : 3 * x1] = span

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)  # filter type 0 per row
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b"")
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def delta_chart(layers: Sequence[Mapping[str, Any]]) -> bytes:
    """The PNG for the per-layer rows of the delta report (paramdelta.json's delta.layers)."""
    count = max(len(layers), 1)
    column = max(4, min(24, 480 // count))
    bar = max(1, (column - 2) // 2)
    width = 2 * MARGIN + count * column
    height = 2 * MARGIN + NORM_HEIGHT + GAP + COSINE_HEIGHT
    canvas = Canvas(width, height)
    norms_bottom = MARGIN + NORM_HEIGHT
    cosine_top = norms_bottom + GAP
    middle = cosine_top + COSINE_HEIGHT // 2
    for y in (cosine_top, middle - COSINE_HEIGHT // 4, middle + COSINE_HEIGHT // 4):
        canvas.fill(MARGIN, y, width - MARGIN, y + 1, GRID_COLOUR)
    canvas.fill(
        MARGIN,
        cosine_top + COSINE_HEIGHT - 1,
        width - MARGIN,
        cosine_top + COSINE_HEIGHT,
        GRID_COLOUR,
    )
    norms = [
        layer[key]
        for layer in layers
        for key in ("post_delta_norm", "base_update_norm")
        if _finite(layer[key])
    ]
    scale = max(norms, default=0.0) or 1.0
    for i, layer in enumerate(layers):
        x = MARGIN + i * column + 1
        broken = not all(_finite(layer[k]) for k in ("post_delta_norm", "base_update_norm"))
        if broken or any(layer["nonfinite"].values()):
            canvas.fill(x, MARGIN, x + 2 * bar, cosine_top + COSINE_HEIGHT, BAD_COLOUR)
            continue
        for offset, key, colour in (
            (0, "post_delta_norm", POST_COLOUR),
            (bar, "base_update_norm", UPDATE_COLOUR),
        ):
            top = norms_bottom - round(NORM_HEIGHT * layer[key] / scale)
            canvas.fill(x + offset, top, x + offset + bar, norms_bottom, colour)
        cosine = layer["cosine"]
        if _finite(cosine):
            end = middle - round(cosine * (COSINE_HEIGHT // 2))
            canvas.fill(x, min(middle, end), x + 2 * bar, max(middle, end) + 1, COSINE_COLOUR)
    canvas.fill(MARGIN, norms_bottom, width - MARGIN, norms_bottom + 1, AXIS_COLOUR)
    canvas.fill(MARGIN, middle, width - MARGIN, middle + 1, AXIS_COLOUR)
    return canvas.png()
