"""Each P3M-Net training loss on hand-made tensors, with values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from p3m.models.features import P3MOutput
from p3m.train import losses


def _trimap(values, shape=None) -> torch.Tensor:
    tensor = torch.tensor(values, dtype=torch.float32)
    return tensor.reshape(shape or (1, 1, 1, len(values)))


def test_trimap_classes_map_0_255_and_everything_between():
    trimap = _trimap([0, 1, 2, 64, 128, 200, 254, 255])
    assert losses.trimap_classes(trimap).tolist() == [[[0, 1, 1, 1, 1, 1, 1, 2]]]


def test_trimap_classes_reject_a_missing_channel_axis():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        losses.trimap_classes(torch.zeros(1, 4, 4))


def test_transition_weight_is_exactly_128():
    weight = losses.transition_weight(_trimap([0, 127, 128, 129, 255]))
    assert weight.flatten().tolist() == [0, 0, 1, 0, 0]


def test_cross_entropy_on_hand_logits():
    # Uniform logits: ln 3 whatever the class.
    assert losses.cross_entropy_loss(torch.zeros(1, 3, 1, 3), _trimap([0, 128, 255])).item() == pytest.approx(
        math.log(3), abs=1e-6)
    # Logits (0, ln 2, 0): p(transition) = 2/4, p(background) = 1/4.
    logits = torch.tensor([0.0, math.log(2.0), 0.0]).reshape(1, 3, 1, 1).repeat(1, 1, 1, 2)
    expected = (math.log(2.0) + math.log(4.0)) / 2
    assert losses.cross_entropy_loss(logits, _trimap([128, 0])).item() == pytest.approx(expected, abs=1e-6)


def test_alpha_loss_whole_image_is_mean_charbonnier():
    pred = torch.tensor([0.0, 0.5, 1.0, 0.25]).reshape(1, 1, 2, 2)
    alpha = torch.tensor([0.0, 0.0, 0.5, 1.0]).reshape(1, 1, 2, 2)
    expected = (1e-6 + 0.5 + 0.5 + 0.75) / 4
    assert losses.alpha_loss(pred, alpha).item() == pytest.approx(expected, abs=1e-7)


def test_alpha_loss_in_transition_divides_by_count_plus_one():
    pred = torch.tensor([0.9, 0.5, 1.0, 0.25]).reshape(1, 1, 2, 2)
    alpha = torch.tensor([0.1, 0.0, 0.5, 1.0]).reshape(1, 1, 2, 2)
    weight = losses.transition_weight(_trimap([128, 0, 128, 255], (1, 1, 2, 2)))
    # |0.9-0.1| + |1.0-0.5| over 2 transition pixels + 1; the two others add sqrt(1e-12) each.
    expected = (0.8 + 0.5 + 2e-6) / 3
    assert losses.alpha_loss(pred, alpha, weight).item() == pytest.approx(expected, abs=1e-7)


def test_gaussian_kernel_is_the_official_sum_of_1d_gaussians():
    kernel = losses.gaussian_kernel()
    assert kernel.shape == (1, 1, 5, 5)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)
    g = [math.exp(-4.0), math.exp(-1.0), 1.0, math.exp(-1.0), math.exp(-4.0)]  # exp(-x^2/2)^2
    total = 10 * sum(g)
    for i, j in ((2, 2), (0, 0), (0, 2), (1, 3)):
        assert kernel[0, 0, i, j].item() == pytest.approx((g[i] + g[j]) / total, rel=1e-6)


def test_gaussian_kernel_rejects_even_size():
    with pytest.raises(ValueError, match="odd"):
        losses.gaussian_kernel(4)


def test_laplacian_pyramid_levels_and_shapes():
    pyramid = losses.laplacian_pyramid(torch.rand(2, 1, 64, 64), losses.gaussian_kernel())
    assert [tuple(level.shape[-2:]) for level in pyramid] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_laplacian_loss_of_a_constant_offset_is_only_the_low_pass_level():
    alpha = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    # The pyramid is linear and a constant has no band-pass content (replicate padding):
    # only the residual level differs, by 0.1 everywhere.
    assert losses.laplacian_loss(alpha + 0.1, alpha).item() == pytest.approx(0.1, abs=1e-5)
    assert losses.laplacian_loss(alpha, alpha).item() == pytest.approx(0.0, abs=1e-7)


def test_laplacian_loss_with_weight_ignores_outside_pixels():
    generator = torch.Generator().manual_seed(1)
    alpha = torch.rand(1, 1, 32, 32, generator=generator)
    pred = torch.rand(1, 1, 32, 32, generator=generator)
    weight = torch.zeros(1, 1, 32, 32)
    weight[..., 8:24, 8:24] = 1
    changed_outside = torch.where(weight > 0, pred, torch.rand(1, 1, 32, 32, generator=generator))
    masked = losses.laplacian_loss(pred, alpha, weight)
    assert losses.laplacian_loss(changed_outside, alpha, weight).item() == pytest.approx(masked.item(), abs=1e-7)
    assert masked.item() < losses.laplacian_loss(pred, alpha).item()


def test_composition_loss_on_hand_colours():
    fg = torch.ones(1, 3, 1, 2)
    bg = torch.zeros(1, 3, 1, 2)
    alpha = torch.tensor([0.25, 0.75]).reshape(1, 1, 1, 2)
    image = alpha.expand(1, 3, 1, 2)
    # Exact composite: only sqrt(1e-12) per channel and pixel, summed over 3 channels.
    assert losses.composition_loss(alpha, image, fg, bg).item() == pytest.approx(3e-6, abs=1e-8)
    # Predicting 0 everywhere: composite = bg = 0; error = alpha in each of 3 channels.
    expected = 3 * (0.25 + 0.75) / 2
    assert losses.composition_loss(torch.zeros_like(alpha), image, fg, bg).item() == pytest.approx(expected, abs=1e-6)


def _output(size: int = 32, seed: int = 0) -> tuple[P3MOutput, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, size, size, generator=generator)
    sides = tuple(torch.randn(2, 3, size, size, generator=generator) for _ in range(3))
    local = torch.rand(2, 1, size, size, generator=generator)
    fused = torch.rand(2, 1, size, size, generator=generator)
    alpha = torch.rand(2, 1, size, size, generator=generator)
    trimap = torch.tensor([0.0, 128.0, 255.0])[torch.randint(0, 3, (2, 1, size, size), generator=generator)]
    return P3MOutput(logits, local, fused, sides), alpha, trimap


def test_p3m_losses_use_the_official_weighting():
    output, alpha, trimap = _output()
    image, fg, bg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = losses.p3m_losses(output, alpha, trimap, image, fg, bg)
    weight = losses.transition_weight(trimap)
    ce = [losses.cross_entropy_loss(output.global_logits, trimap)] + [
        losses.cross_entropy_loss(side, trimap) for side in output.side_logits]
    global_term = 3 * ce[0] + ce[1] + ce[2] + ce[3]
    local = losses.alpha_loss(output.local_alpha, alpha, weight) + losses.laplacian_loss(output.local_alpha, alpha, weight)
    fusion = losses.alpha_loss(output.fused_alpha, alpha) + losses.laplacian_loss(output.fused_alpha, alpha)
    composition = losses.composition_loss(output.fused_alpha, image, fg, bg)
    expected = global_term / 6 + 2 * local + 3 * fusion + composition
    assert terms["global"].item() == pytest.approx(global_term.item(), rel=1e-6)
    assert terms["local"].item() == pytest.approx(local.item(), rel=1e-6)
    assert terms["fusion"].item() == pytest.approx(fusion.item(), rel=1e-6)
    assert terms["composition"].item() == pytest.approx(composition.item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_p3m_losses_without_fg_bg_leave_composition_out():
    output, alpha, trimap = _output(seed=2)
    terms = losses.p3m_losses(output, alpha, trimap)
    assert "composition" not in terms
    expected = terms["global"] / 6 + 2 * terms["local"] + 3 * terms["fusion"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_p3m_losses_accept_bf16_outputs_and_compute_in_float32():
    output, alpha, trimap = _output(seed=3)
    low = P3MOutput(*(t.bfloat16() for t in output[:3]), tuple(t.bfloat16() for t in output.side_logits))
    terms = losses.p3m_losses(low, alpha, trimap)
    reference = losses.p3m_losses(P3MOutput(*(t.bfloat16().float() for t in output[:3]),
                                            tuple(t.bfloat16().float() for t in output.side_logits)), alpha, trimap)
    assert terms["loss"].dtype == torch.float32
    assert terms["loss"].item() == pytest.approx(reference["loss"].item(), rel=1e-6)


def test_local_loss_gradient_stays_in_the_transition_region():
    output, alpha, trimap = _output(seed=4)
    local = output.local_alpha.clone().requires_grad_(True)
    weight = losses.transition_weight(trimap)
    (losses.alpha_loss(local, alpha, weight) + losses.laplacian_loss(local, alpha, weight)).backward()
    assert local.grad[weight == 0].abs().max().item() == 0.0
    assert local.grad[weight == 1].abs().max().item() > 0.0
