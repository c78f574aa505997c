"""The CPU dropout: the share dropped, the expectation kept, seeded like torch, nothing in eval mode."""

from __future__ import annotations

import pytest
import torch

from model.dropout import Dropout


def test_drops_about_p_of_the_elements_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    layer = Dropout(0.1).train()
    x = torch.ones(1000, 257)  # an odd size: the last 64-bit draw is shared with nothing
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=0.005)
    values = torch.unique(y).tolist()
    assert values == [0.0, pytest.approx(65536 / (65536 - 6554))]
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)


def test_the_random_bits_are_independent_across_elements() -> None:
    """Each 64-bit draw feeds four neighbours: their drops must not go together."""
    torch.manual_seed(1)
    kept = Dropout(0.5).train()(torch.ones(200_000)) != 0
    # Every neighbour pair: within a draw (lanes 0-1, 1-2, 2-3) and across draws (3 and the next draw's 0).
    both = (kept[:-1] & kept[1:]).float()
    lane = torch.arange(both.numel()) % 4  # the lane of the pair's first element
    shares = torch.stack([both[lane == k].mean() for k in range(4)])
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.01), shares


def test_seeded_eval_and_zero_p() -> None:
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    a = Dropout(0.2).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.2).train()(x)
    assert torch.equal(a, b)
    assert torch.equal(Dropout(0.2).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_gradient_flows_only_through_kept_elements() -> None:
    torch.manual_seed(4)
    x = torch.randn(128, 16, requires_grad=True)
    y = Dropout(0.3).train()(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.all(x.grad[~kept] == 0)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 65536 / (65536 - round(0.3 * 65536))))


def test_bf16_input_stays_bf16_and_keeps_the_expectation() -> None:
    torch.manual_seed(5)
    x = (1.0 + torch.rand(4000, 1000)).to(torch.bfloat16)
    y = Dropout(0.1).train()(x)
    assert y.dtype == torch.bfloat16
    # Each kept element is x / 0.9 rounded once to bf16: no shared bias. A scale first rounded to bf16
    # (1.1111 -> 1.1094) would put the ratio 0.16% low, about 9 standard deviations of the sampling noise.
    ratio = y.double().sum() / x.double().sum()
    assert ratio.item() == pytest.approx(1.0, abs=0.0008)
    with pytest.raises(ValueError):
        Dropout(0.999995)  # rounds to a drop probability of 1 at 16-bit resolution
