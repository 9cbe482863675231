"""What a head layer before global average pooling (GAP) does: only a scale.

GAP reads only the DC bin of a map. Fixed spectral pooling keeps that bin, so
``GAP(SpectralPool2d(x)) = c * GAP(x)`` exactly, with ``c`` the layer's normalisation
(``HW/(h*w)`` Fourier, ``sqrt(HW/(h*w))`` orthonormal Hartley). A DiffStride head keeps the
DC bin with mask 1 and the Fourier normalisation: ``c = HW/(h*w)`` of its crop, 1 where the
crop keeps the whole map, and the stride gets no gradient from what GAP sees. Hence
``hybrid`` == ``diffstride_scaled`` (the ablation: ``diffstride`` + that constant, no head).
"""
import math

import pytest
import torch

from hybrid_model import DiffStride2d, SpectralGain2d, SpectralPool2d, build_model, spectral_gain


def gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-2, -1))


@pytest.mark.parametrize("impl", ["matmul", "fft"])
@pytest.mark.parametrize("transform, expected", [("fourier", 4.5), ("hartley", 2.0)])
def test_gap_of_spectral_pooling_is_a_constant_times_gap(transform, expected, impl):
    # 18x18 is layer4's map at the default strides (1,1,2,2,2); stride 2 is the head's.
    x = torch.randn(3, 5, 18, 18, dtype=torch.float64)
    y = SpectralPool2d(2, transform=transform, impl=impl)(x)
    torch.testing.assert_close(gap(y), expected * gap(x), rtol=1e-10, atol=1e-12)
    assert spectral_gain((18, 18), (2.0, 2.0), transform) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("transform", ["fourier", "hartley"])
@pytest.mark.parametrize("size, stride", [((16, 16), (2.0, 2.0)), ((17, 15), (2.0, 3.0)), ((14, 20), (1.5, 2.5))])
def test_the_gain_formula_matches_the_layer_at_other_sizes(transform, size, stride):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    y = SpectralPool2d(stride, transform=transform)(x)
    h, w = y.shape[-2:]
    c = size[0] * size[1] / (h * w)
    c = c if transform == "fourier" else math.sqrt(c)
    assert spectral_gain(size, stride, transform) == pytest.approx(c, rel=1e-12)
    torch.testing.assert_close(gap(y), c * gap(x), rtol=1e-10, atol=1e-12)


def test_a_diffstride_head_that_keeps_the_whole_map_is_the_identity_on_gap():
    # R=4 at 18x18, stride 2: the crop (18/2 + 2R bins) keeps every bin; the output is 18x18.
    layer = DiffStride2d(2.0).double()
    x = torch.randn(2, 6, 18, 18, dtype=torch.float64)
    y = layer(x)
    assert y.shape[-2:] == (18, 18)
    ratio = gap(y) / gap(x)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=1e-10, atol=0)
    gap(y).sum().backward()
    assert layer.stride.grad.abs().max() < 1e-8  # what GAP sees does not depend on the stride


@pytest.mark.parametrize("smoothness, size", [(0.5, (18, 18)), (4.0, (20, 20)), (1.0, (15, 17))])
def test_a_diffstride_head_that_crops_scales_gap_by_the_fourier_gain(smoothness, size):
    layer = DiffStride2d(2.0, smoothness=smoothness).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    h, w = y.shape[-2:]
    assert (h, w) != size
    torch.testing.assert_close(gap(y), size[0] * size[1] / (h * w) * gap(x), rtol=1e-10, atol=1e-12)
    gap(y).sum().backward()
    assert layer.stride.grad.abs().max() < 1e-8


@pytest.mark.parametrize("strides, transform", [((4, 1, 2, 2, 3), "hartley"), ((2, 1, 3, 1, 2), "fourier")])
def test_hybrid_is_diffstride_with_a_scaled_classifier_input(strides, transform):
    """Same weights: the same logits and the same gradients, in training mode too."""
    torch.manual_seed(0)
    # Small maps (stem stride 2-4) keep this fast; float32 with tolerances for its rounding.
    hybrid = build_model("hybrid", strides, smoothness=1.0, head_transform=transform)
    scaled = build_model("diffstride_scaled", strides, smoothness=1.0, head_transform=transform)
    assert isinstance(hybrid.head_pool, SpectralPool2d) and isinstance(scaled.head_pool, SpectralGain2d)
    scaled.load_state_dict(hybrid.state_dict())  # neither head has parameters or buffers
    x = torch.randn(4, 3, 32, 32)
    y = torch.arange(4)
    losses = []
    for model in (hybrid, scaled):
        loss = torch.nn.functional.cross_entropy(model.train()(x), y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    grads = dict(scaled.named_parameters())
    for name, param in hybrid.named_parameters():
        scale = float(param.grad.abs().max()) + 1e-12
        torch.testing.assert_close(param.grad / scale, grads[name].grad / scale, rtol=0, atol=1e-4, msg=name)
    # The constant differs from 1 (else the ablation would be plain diffstride).
    size = tuple(scaled.forward_features(x[:1])[1]["layer4"].shape[-2:])
    assert scaled.head_pool.gain(size) > 1.5


def test_hybrid_defaults_to_a_hartley_head_and_the_spectral_baseline_to_fourier():
    assert build_model("hybrid").head_pool.transform == "hartley"
    assert build_model("diffstride_scaled").head_pool.transform == "hartley"
    assert build_model("hybrid", head_transform="fourier").head_pool.transform == "fourier"
    body = [m for m in build_model("spectral").modules() if isinstance(m, SpectralPool2d)]
    assert body and all(m.transform == "fourier" for m in body)
    # The two options are separate: the body's transform does not move the head's.
    model = build_model("hybrid", spectral_transform="fourier", head_transform="hartley")
    assert model.head_pool.transform == "hartley"


def test_bad_head_options():
    with pytest.raises(ValueError, match="head_transform"):
        build_model("hybrid", head_transform="wavelet")
    with pytest.raises(ValueError, match="transform"):
        SpectralGain2d(2.0, "cosine")


def test_a_card_from_before_the_hartley_default_rebuilds_its_fourier_head():
    from hybrid_model import build_from_card

    legacy = {"variant": "hybrid", "strides": [1, 1, 2, 2, 2], "num_classes": 10, "options": {}}
    assert build_from_card(legacy).head_pool.transform == "fourier"
    current = dict(legacy, options={"head_transform": "hartley"})
    assert build_from_card(current).head_pool.transform == "hartley"
    assert build_from_card(dict(legacy, variant="diffstride")).head_pool is None
