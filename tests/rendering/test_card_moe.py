"""The card of a DeepSeek-sized FP8 merge: experts summarised per layer, and it stays small."""

from paramdelta.engine.delta import DeltaReport
from paramdelta.engine.kernel import Moments
from paramdelta.pipeline.lineage import sample_record
from paramdelta.rendering.card import render_card


def _report(layers=61, experts=256):
    report = DeltaReport()
    moments = Moments(
        elements=4, gram=[1.0, 0.0, 0.0, 4.0], requantized=4
    )  # post_sq, cross; cross, update_sq
    moments.requant_err_sq, moments.requant_sq = 0.0009, 1.0
    report.add("model.embed_tokens.weight", Moments(elements=4, gram=[1.0, 0.0, 0.0, 1.0]))
    for layer in range(layers):
        for e in range(experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                report.add(f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight", moments)
    return report


def test_moe_card_has_one_row_per_layer_with_experts_and_requantization_error():
    record = sample_record()
    record["delta"] = _report().summary()
    text = render_card(record)
    table = text[text.index("| Layer |") :].split("\n\n")[0].splitlines()
    assert table[0] == (
        "| Layer | Tensors | Experts | ‖post − base‖ | ‖new base − base‖ | Cosine | NaN/Inf |"
        " FP8 re-quantization error |"
    )
    assert table[2] == "| **all** | 46849 | - | 216.4 | 432.9 | 0 | 0 | 0.03 |"
    assert table[3] == "| embeddings | 1 | - | 1 | 1 | 0 | 0 | - |"
    assert table[4] == "| layer 0 | 768 | 256 | 27.71 | 55.43 | 0 | 0 | 0.03 |"
    assert len(table) == 2 + 1 + 1 + 61  # header, the overall row, embeddings, the layers
    assert len(text.encode()) < 20_000  # no row per tensor or expert


def test_dense_card_has_neither_column():
    record = sample_record()
    text = render_card(record)
    header = next(line for line in text.splitlines() if line.startswith("| Layer |"))
    assert header == "| Layer | Tensors | ‖post − base‖ | ‖new base − base‖ | Cosine | NaN/Inf |"
