"""Introspection: layer listing with crop boxes, per-stage spectra, cost, freezing."""
import numpy as np
import pytest
import torch

from hybrid_model import VARIANTS, build_model, describe_downsampling, forward_features, freeze, model_cost
from hybrid_model.layers import DiffStride2d, FixedSeparable2d
from serving.spectra import log_spectrum


def test_describe_lists_sizes_that_chain_through_the_network():
    model = build_model("hybrid", (1, 1, 2, 2, 2))
    infos = describe_downsampling(model)
    assert [i.name for i in infos] == ["stem_pool", "layer2.0.spectral_pool", "layer3.0.spectral_pool", "layer4.0.spectral_pool", "head_pool"]
    assert [i.kind for i in infos] == ["diffstride"] * 4 + ["spectral-hartley"]  # Algorithm 1: Hartley head
    assert [i.in_size for i in infos] == [(32, 32), (32, 32), (24, 24), (20, 20), (18, 18)]
    assert [i.out_size for i in infos] == [(32, 32), (24, 24), (20, 20), (18, 18), (9, 9)]
    _, features = forward_features(model, torch.randn(1, 3, 32, 32))
    assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == {
        "stem": (32, 32), "layer1": (32, 32), "layer2": (24, 24), "layer3": (20, 20), "layer4": (18, 18), "head": (9, 9)
    }


def test_crop_boxes_describe_the_kept_band():
    infos = describe_downsampling(build_model("diffstride", (1, 1, 2, 2, 2)))
    crop_h, crop_w = infos[1].crop  # layer2: 32x32, stride 2, R=4
    assert (crop_h.pass_to, crop_h.cut_at, crop_h.kept, crop_h.out_size) == (8.0, 12.0, 24, 24)
    assert (crop_w.pass_to, crop_w.cut_at, crop_w.kept, crop_w.out_size) == (9.0, 13.0, 13, 24)
    assert infos[1].stride == (2.0, 2.0)
    # The stem layer at stride 1 is projected to H/(H-R) and keeps everything.
    assert infos[0].stride == pytest.approx((32 / 28, 32 / 28))
    assert infos[0].crop[0].kept == 32


def test_conv_model_lists_its_strided_convolutions():
    infos = describe_downsampling(build_model("resnet18", (1, 1, 2, 2, 2)))
    assert [i.kind for i in infos] == ["conv"] * 6 and all(i.crop is None for i in infos)
    assert [i.out_size for i in infos[::2]] == [(16, 16), (8, 8), (4, 4)]


def test_describe_does_not_touch_batchnorm_statistics_or_training_mode():
    model = build_model("hybrid").train()
    before = model.layer1[0].bn1.running_mean.clone()
    describe_downsampling(model)
    model_cost(model)
    assert model.training and torch.equal(before, model.layer1[0].bn1.running_mean)


def test_log_spectrum_is_centred_and_channel_averaged():
    feature = np.ones((3, 8, 6), np.float32)
    spectrum = log_spectrum(feature)
    assert spectrum.shape == (8, 6)
    assert np.unravel_index(spectrum.argmax(), spectrum.shape) == (4, 3)
    assert spectrum[4, 3] == pytest.approx(np.log1p(48.0))
    assert log_spectrum(torch.ones(2, 3, 8, 6)).shape == (2, 8, 6)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        log_spectrum(np.ones((8, 6)))


@pytest.mark.parametrize("shape", [(3, 32, 32), (128, 24, 24), (512, 8, 9), (5, 15, 7), (4, 7, 2), (2, 1, 1),
                                   (2, 3, 9, 10)])
def test_log_spectrum_equals_its_definition(shape):
    """The half-spectrum mirror trick against the full ``fftshift(fft2)``, odd and even sizes."""
    feature = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3
    full = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(feature.astype(np.float64)), axes=(-2, -1)))).mean(axis=-3)
    np.testing.assert_allclose(log_spectrum(feature), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_spectrum(torch.from_numpy(feature)), full, rtol=1e-5, atol=1e-5)


def test_model_cost_counts_convolutions_exactly_for_resnet18():
    model = build_model("resnet18", (1, 1, 2, 2, 2))
    expected = 0
    x = torch.randn(1, 3, 32, 32)
    hooks = [
        m.register_forward_hook(
            lambda m, i, o: globals().__setitem__("_f", globals().get("_f", 0) + 2 * o.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1])
        )
        for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    globals()["_f"] = 0
    model.eval()(x)
    for h in hooks:
        h.remove()
    expected = globals()["_f"] + 2 * 512 * 10
    cost = model_cost(model)
    assert cost["flops"] == expected
    assert cost["params"] == sum(p.numel() for p in model.parameters())
    assert cost["activation_bytes"] > 4 * 64 * 32 * 32


def test_cost_follows_the_strides():
    small = model_cost(build_model("diffstride", (1, 1, 3, 2, 3)))["flops"]
    large = model_cost(build_model("diffstride", (1, 1, 2, 2, 2)))["flops"]
    assert small < large


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_freeze_computes_the_same_function_with_constant_operators(variant):
    model = build_model(variant, (1, 1, 3, 1, 2)).eval()
    frozen = freeze(model)
    assert not any(isinstance(m, DiffStride2d) for m in frozen.modules())
    assert any(isinstance(m, FixedSeparable2d) for m in frozen.modules()) == (variant != "resnet18")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="expects"):
        if variant != "resnet18":
            frozen(torch.randn(1, 3, 40, 40))
        else:
            raise ValueError("expects: resnet18 has nothing to freeze")


def test_head_description_and_transforms_for_the_cards():
    from hybrid_model import describe_head, layer_transforms

    hybrid = build_model("hybrid")  # Hartley head by default (the hybrid paper's Algorithm 1)
    head = describe_head(hybrid)
    assert head["kind"] == "spectral" and head["transform"] == "hartley"
    assert head["in_size"] == [18, 18] and head["out_size"] == [9, 9] and head["gap_gain"] == pytest.approx(2.0)
    assert layer_transforms(hybrid) == {"stem_pool": "fourier", "layer2.0.spectral_pool": "fourier",
                                        "layer3.0.spectral_pool": "fourier", "layer4.0.spectral_pool": "fourier",
                                        "head_pool": "hartley"}
    # A DiffStride head that crops 20x20 to 18x18 scales GAP by 400/324; the ablation by the Hartley gain.
    assert describe_head(build_model("diffstride2", (1, 1, 1, 3, 1)))["gap_gain"] == pytest.approx(400 / 324)
    assert describe_head(build_model("diffstride_scaled"))["gap_gain"] == pytest.approx(2.0)
    assert describe_head(build_model("hybrid", head_transform="fourier"))["gap_gain"] == pytest.approx(4.5)
    assert describe_head(build_model("resnet18")) is None and layer_transforms(build_model("resnet18")) == {}
    assert set(layer_transforms(build_model("spectral")).values()) == {"fourier"}
