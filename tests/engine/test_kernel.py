"""The kernel on one chunk: the formula bit for bit, for one delta or several, and its moments."""

import itertools
import math

import pytest
import torch

from paramdelta.engine.kernel import (
    Difference,
    check_copy,
    merge_into,
    operand_roles,
    scratch_buffers,
)


def _operands(n, dtype, count=10_000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, generator=generator).to(dtype) for _ in range(n)]


def _reference(new, deltas, dtype):
    """The formula as the issue states it: float32, left to right, rounded once."""
    acc = new.float()
    for post, base, weight in deltas:
        acc = acc + weight * (post.float() - base.float())
    return acc.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block", [1 << 20, 1000])  # one block, and several with a partial last
def test_one_delta_of_weight_one_is_paramdelta_bit_for_bit(dtype, block):
    post, base, new = _operands(3, dtype)
    out = torch.empty_like(new)
    merge_into(out, new, [(post, base, 1.0)], scratch_buffers(block, torch.device("cpu")))
    assert torch.equal(out, (post.float() - base.float() + new.float()).to(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block", [1 << 20, 999])
@pytest.mark.parametrize(
    "weights", [(0.7, -0.3), (0.7, -0.3, 1.0), (1.0, 1.0), (0.1, 0.2, 0.3)], ids=str
)
def test_several_weighted_deltas_accumulate_in_order_and_round_once(dtype, block, weights):
    *inputs, new = _operands(2 * len(weights) + 1, dtype, seed=1)
    deltas = [(inputs[2 * i], inputs[2 * i + 1], w) for i, w in enumerate(weights)]
    out = torch.empty_like(new)
    merge_into(out, new, deltas, scratch_buffers(block, torch.device("cpu"), len(deltas)))
    assert torch.equal(out, _reference(new, deltas, dtype))
    if dtype != torch.float32:  # rounded once: rounding after each delta differs somewhere
        stepwise = new
        for post, base, weight in deltas:
            stepwise = _reference(stepwise, [(post, base, weight)], dtype)
        assert not torch.equal(out, stepwise)


@pytest.mark.parametrize("block", [1 << 20, 999])
def test_a_computed_difference_is_added_as_it_is_and_its_base_only_measured(block):
    # An adapter's delta (float32, s·B@A) next to a checkpoint's, in either order.
    post, base, new, base2 = _operands(4, torch.bfloat16, seed=3)
    (computed,) = _operands(1, torch.float32, seed=4)
    scratch = scratch_buffers(block, torch.device("cpu"), 2)
    adapter = Difference(computed, base2, 0.5)
    for deltas in ([adapter, (post, base, 1.0)], [(post, base, 1.0), adapter]):
        out = torch.empty_like(new)
        merge_into(out, new, deltas, scratch)
        acc = new.float()
        for term in deltas:
            d = term.values if isinstance(term, Difference) else term[0].float() - term[1].float()
            acc = acc + term[2] * d
        assert torch.equal(out, acc.to(torch.bfloat16))
    moments = merge_into(torch.empty_like(new), new, [adapter], scratch)
    update = (new.float() - base2.float()).double()
    assert math.isclose(moments.post_sq, float(computed.double() @ computed.double()), rel_tol=1e-5)
    assert math.isclose(moments.update_sq, float(update @ update), rel_tol=1e-5)
    # Beside a checkpoint's delta, the adapter's Gram rows are its values and its base update.
    moments = merge_into(torch.empty_like(new), new, [(post, base, 1.0), adapter], scratch)
    rows = [
        post.double() - base.double(),
        new.double() - base.double(),
        computed.double(),
        update,
    ]
    for i, j in itertools.product(range(4), repeat=2):
        expected = float(rows[i] @ rows[j])
        assert math.isclose(moments.dot(i, j), expected, rel_tol=1e-4, abs_tol=1e-3), (i, j)


def test_scratch_for_fewer_deltas_is_refused():
    post, base, new = _operands(3, torch.float32, count=10)
    with pytest.raises(ValueError, match="scratch for 1 deltas, not 2"):
        merge_into(
            new.clone(), new, [(post, base, 1.0)] * 2, scratch_buffers(8, torch.device("cpu"))
        )


def test_the_moments_describe_every_delta_unscaled_and_every_pair():
    post, base, new, post2, base2 = _operands(5, torch.float32, count=4096, seed=2)
    out = torch.empty_like(new)
    moments = merge_into(
        out,
        new,
        [(post, base, 0.5), (post2, base2, -2.0)],
        scratch_buffers(1000, torch.device("cpu"), 2),
    )
    vectors = [(post - base), (new - base), (post2 - base2), (new - base2)]
    vectors = [v.double() for v in vectors]
    assert moments.elements == 4096 and moments.deltas == 2
    for row, a in enumerate(vectors):
        for column, b in enumerate(vectors):
            assert math.isclose(moments.dot(row, column), float(a @ b), rel_tol=1e-4, abs_tol=1e-2)
    assert (moments.post_sq, moments.update_sq, moments.cross) == (
        moments.dot(0, 0),
        moments.dot(1, 1),
        moments.dot(0, 1),
    )
    assert moments.nonfinite is None


def test_a_nan_in_a_later_delta_is_counted_as_that_deltas_post():
    post, base, new, post2, base2 = _operands(5, torch.bfloat16, count=3000, seed=3)
    post2[17] = float("nan")
    out = torch.empty_like(new)
    moments = merge_into(
        out,
        new,
        [(post, base, 1.0), (post2, base2, 1.0)],
        scratch_buffers(1000, torch.device("cpu"), 2),
    )
    assert moments.nonfinite is not None
    # post, base, new_base, output, post[1], base[1]
    assert moments.nonfinite.nan == [0, 0, 0, 1, 1, 0]
    assert operand_roles(2) == ("post", "base", "new_base", "output", "post[1]", "base[1]")
    assert torch.isnan(out[17]) and int(torch.isnan(out).sum()) == 1


def test_a_large_later_delta_that_overflows_is_caught():
    new = torch.full((100,), 30000.0, dtype=torch.float16)
    small, zero = torch.full_like(new, 1.0), torch.zeros_like(new)
    big = torch.full_like(new, 20000.0)
    out = torch.empty_like(new)
    deltas = [(small, zero, 1.0), (big, zero, 2.0)]
    moments = merge_into(out, new, deltas, scratch_buffers(64, torch.device("cpu"), 2))
    assert moments.nonfinite is not None and moments.nonfinite.inf == [0, 0, 0, 100, 0, 0]


def test_an_overflow_of_the_output_dtype_is_counted():
    new = torch.full((100,), 60000.0, dtype=torch.float16)
    post, base = torch.full_like(new, 10000.0), torch.zeros_like(new)
    out = torch.empty_like(new)
    moments = merge_into(out, new, [(post, base, 1.0)], scratch_buffers(64, torch.device("cpu")))
    assert moments.nonfinite is not None and moments.nonfinite.inf == [0, 0, 0, 100]


def test_a_copy_with_an_inf_is_reported_and_a_finite_one_is_not():
    values = torch.ones(10, dtype=torch.bfloat16)
    assert check_copy(values) is None
    values[3] = float("inf")
    counted = check_copy(values)
    assert counted is not None and (counted.nan, counted.inf) == ([0, 0, 0, 0], [0, 0, 0, 1])
