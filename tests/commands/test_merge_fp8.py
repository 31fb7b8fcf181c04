"""`paramdelta merge` of an FP8 mixture of experts: what it says, what the card shows."""

import json
import re

from paramdelta.cli import main
from paramdelta.testing.fp8_checkpoints import deepseek_config, deepseek_tensors, write_generated


def test_fp8_moe_merge_reports_the_requantization_error_and_experts(tmp_path, capsys):
    config = deepseek_config(layers=3, experts=4, dense_layers=1)
    tensors = deepseek_tensors(config)
    trio = {
        role: write_generated(tmp_path / role, tensors, config, shards=4, seed=seed)
        for seed, role in enumerate(("base", "post", "new_base"))
    }
    argv = ["merge", "--output", str(tmp_path / "out")]
    argv += [f"--{role.replace('_', '-')}={path}" for role, path in trio.items()]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"^delta: .*, FP8 re-quantization error 0\.0[1-3]\d*$", out, re.M), out
    assert "float8_e4m3fn" in out  # the dtype written
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| Layer | Tensors | Experts |" in card and "FP8 re-quantization error |" in card
    # 4 experts x 3 projections, 3 shared-expert and 5 attention projections, 4 norms, the router
    assert re.search(r"^\| layer 1 \| 26 \| 4 \| ", card, re.M)
    record = json.loads((tmp_path / "out" / "paramdelta.json").read_text())
    assert record["delta"]["layers"][2]["experts"] == 4
