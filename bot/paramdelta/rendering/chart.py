"""The delta report's per-layer chart, a PNG committed beside the card (matplotlib, Agg).

Two panels share one x axis, a position per layer group in model order
(embeddings, layer 0, 1, ..., the rest, the LM head). Above: the norm of
post - base (blue) and of new base - base (orange) per group. Below: their
cosine on a fixed -1...1 axis. A group with a non-finite value is shaded red in
both panels. The card's table has the numbers; the chart shows where along the
model they change. The colours are the card's alt text's.

The figure is drawn on matplotlib's Agg canvas without pyplot: no global state,
so concurrent publishes can draw at once. Its size is fixed (1000 x 560 px), so
the Hub, which shows it at page width, never scales its text below legibility;
with 100 groups or more only every n-th layer is named.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FILENAME = "paramdelta-delta.png"
POST_COLOUR = "#1f77b4"  # blue
UPDATE_COLOUR = "#ff7f0e"  # orange
COSINE_COLOUR = "#2ca02c"  # green
BAD_COLOUR = "#d62728"  # red
SIZE_INCHES, DPI = (10.0, 5.6), 100
NAMED_TICKS = 50  # with more groups than twice this, layer names are thinned to about this many
ROLE_NAMES = {"base": "base", "post": "post", "new_base": "new base"}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _name(checkpoint: Mapping[str, Any]) -> str:
    return str(checkpoint.get("repo") or checkpoint.get("path") or "?")


def merge_title(record: Mapping[str, Any]) -> str:
    """The chart's title: the output, and the three checkpoints it was merged from."""
    by_role = {c["role"]: _name(c) for c in record.get("checkpoints", [])}
    output = (record.get("output") or {}).get("repo") or "merged model"
    inputs = (
        f"{by_role.get('new_base', '?')} + ({by_role.get('post', '?')}"
        f" \N{MINUS SIGN} {by_role.get('base', '?')})"
    )
    return f"ParamΔ delta per layer: {output}\n{inputs}"


def _ticks(count: int) -> range:
    """Which positions are named: every one, or with 100+ groups every n-th."""
    step = 1 if count < 2 * NAMED_TICKS else math.ceil(count / NAMED_TICKS)
    return range(0, count, step)


def delta_figure(record: Mapping[str, Any]) -> Figure:
    """The chart of ``record``'s delta report (paramdelta.json's ``delta``) as a Figure."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    layers: Sequence[Mapping[str, Any]] = record["delta"]["layers"]
    count = len(layers)
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    norms, cosines = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    figure.suptitle(merge_title(record), fontsize=12)
    positions = range(count)

    def value(layer: Mapping[str, Any], key: str) -> float:
        return float(layer[key]) if _finite(layer[key]) else 0.0

    broken = [
        i
        for i, layer in enumerate(layers)
        if not all(_finite(layer[k]) for k in ("post_delta_norm", "base_update_norm"))
        or any(layer["nonfinite"].values())
    ]
    for axes in (norms, cosines):
        for i in broken:
            axes.axvspan(i - 0.5, i + 0.5, color=BAD_COLOUR, alpha=0.35, linewidth=0)
        axes.grid(axis="y", color="#dddddd", linewidth=0.8)
        axes.set_axisbelow(True)

    norms.bar(
        [i - 0.2 for i in positions],
        [value(layer, "post_delta_norm") for layer in layers],
        width=0.4,
        color=POST_COLOUR,
        label="‖post − base‖",
    )
    norms.bar(
        [i + 0.2 for i in positions],
        [value(layer, "base_update_norm") for layer in layers],
        width=0.4,
        color=UPDATE_COLOUR,
        label="‖new base − base‖",
    )
    norms.set_ylabel("L2 norm of the difference")
    handles, labels = norms.get_legend_handles_labels()
    if broken:
        handles.append(Patch(color=BAD_COLOUR, alpha=0.35))
        labels.append("non-finite values")
    norms.legend(handles, labels, loc="lower left", bbox_to_anchor=(0, 1), ncols=3, frameon=False)

    cosines.bar(
        positions,
        [value(layer, "cosine") for layer in layers],
        width=0.8,
        color=COSINE_COLOUR,
    )
    cosines.axhline(0, color="#666666", linewidth=0.8)
    cosines.set_ylim(-1.05, 1.05)
    cosines.set_yticks([-1, -0.5, 0, 0.5, 1])
    cosines.set_ylabel("cosine")
    cosines.set_title("cosine of post − base and new base − base", fontsize=10)

    shown = _ticks(count)
    cosines.set_xticks(list(shown), [str(layers[i]["layer"]) for i in shown])
    cosines.tick_params(axis="x", labelrotation=90 if count > 12 else 0, labelsize=8)
    cosines.set_xlim(-0.6, max(count, 1) - 0.4)
    cosines.set_xlabel("layer group, in model order")
    return figure


def delta_chart(record: Mapping[str, Any]) -> bytes:
    """The PNG for ``record``'s delta report: the figure, rendered by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = delta_figure(record)
    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()
