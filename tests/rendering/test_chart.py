"""The delta chart: a PNG wide enough for the Hub's page, with a title, legend, axes and
layer names, drawn from the delta report."""

import io
import math
import struct

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread
from matplotlib.text import Text

from paramdelta.rendering import chart


def _record(count, broken=()):
    """A lineage record whose delta report has ``count`` groups in model order."""
    groups = ["embeddings", *range(count - 3), "other", "lm_head"]
    layers = [
        {
            "layer": group,
            "tensors": 9,
            "post_delta_norm": 1 + math.sin(i / 5) ** 2,
            "base_update_norm": 0.5 + i / count,
            "cosine": math.cos(i / 7),
            "nonfinite": {"post": int(i in broken), "base": 0, "new_base": 0, "output": 0},
        }
        for i, group in enumerate(groups)
    ]
    checkpoints = [
        {"role": "base", "repo": "org/base-7b"},
        {"role": "post", "repo": "org/base-7b-instruct"},
        {"role": "new_base", "path": "/models/base-7b-v2"},
    ]
    return {"checkpoints": checkpoints, "output": {"repo": "me/out"}, "delta": {"layers": layers}}


def _size(png):
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", png[16:24])


def _pixels(figure):
    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    out.seek(0)
    return imread(out)


def test_the_chart_of_54_groups_is_a_page_wide_png_that_carries_text():
    record = _record(54)
    png = chart.delta_chart(record)
    assert _size(png) == (1000, 560)
    assert _size(chart.delta_chart(_record(3))) == (1000, 560)  # 2 layers: the same size
    labelled = imread(io.BytesIO(png))
    # The same data with every text artist hidden: what text adds is the difference.
    figure = chart.delta_figure(record)
    for text in figure.findobj(Text):
        text.set_visible(False)
    bare = _pixels(figure)
    assert labelled.shape == bare.shape == (560, 1000, 4)
    changed = np.any(np.abs(labelled - bare) > 0.1, axis=2).mean()
    assert changed > 0.02, changed  # title, legend, tick labels and axis labels: 2%+ of pixels


def test_the_chart_names_the_merge_the_norms_the_cosine_scale_and_every_layer():
    figure = chart.delta_figure(_record(54, broken=(5,)))
    norms, cosines = figure.axes
    assert figure.get_suptitle() == (
        "ParamΔ delta per layer: me/out\n/models/base-7b-v2 + (org/base-7b-instruct − org/base-7b)"
    )
    assert [t.get_text() for t in norms.get_legend().get_texts()] == [
        "‖post − base‖",
        "‖new base − base‖",
        "non-finite values",
    ]
    assert cosines.get_ylim() == (-1.05, 1.05)
    assert [t.get_text() for t in cosines.get_yticklabels()] == [
        "−1.0",
        "−0.5",
        "0.0",
        "0.5",
        "1.0",
    ]
    assert cosines.get_ylabel() == "cosine" and norms.get_ylabel()
    assert cosines.get_xlabel() == "layer group, in model order"
    names = [t.get_text() for t in cosines.get_xticklabels()]
    assert names == ["embeddings", *map(str, range(51)), "other", "lm_head"]
    post_bars = norms.containers[0]
    assert [round(b.get_height(), 6) for b in post_bars][:2] == [
        1.0,
        round(1 + math.sin(0.2) ** 2, 6),
    ]


def test_with_100_groups_or_more_the_layer_names_are_thinned():
    figure = chart.delta_figure(_record(130))
    names = [t.get_text() for t in figure.axes[1].get_xticklabels()]
    assert names[:3] == ["embeddings", "2", "5"]  # every 3rd of 130: at most 50 named
    assert len(names) == 44
    few = chart.delta_figure(_record(99))
    assert len(few.axes[1].get_xticklabels()) == 99
