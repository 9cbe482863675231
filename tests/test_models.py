"""The ResNet-18 variants: placement of the layers, every stride tuple, training steps, errors."""
import pytest
import torch

from hybrid_model import (
    PAPER_STRIDES,
    VARIANTS,
    PAPER_VARIANTS,
    DiffStride2d,
    SpectralPool2d,
    build_model,
    learned_strides,
    stride_parameters,
)


@pytest.mark.parametrize("strides", PAPER_STRIDES)
@pytest.mark.parametrize("variant", sorted(PAPER_VARIANTS))  # diffstride_scaled: tests/test_head.py
def test_every_variant_and_stride_tuple_trains_with_strides_changing(variant, strides):
    torch.manual_seed(0)
    model = build_model(variant, strides, num_classes=10)
    weights = [p for p in model.parameters() if p.dim() > 1]
    stride_params = stride_parameters(model)
    optimizer = torch.optim.SGD(
        [{"params": weights}, {"params": stride_params, "lr": 0.1}] if stride_params else [{"params": weights}],
        lr=0.05,
        momentum=0.9,
    )
    before = learned_strides(model)
    first_weight = weights[0].detach().clone()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for _ in range(2):
        logits = model(x)
        assert logits.shape == (4, 10) and torch.isfinite(logits).all()
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(first_weight, weights[0])
    has_diffstride = VARIANTS[variant][0] == "diffstride"
    assert bool(stride_params) == has_diffstride
    after = learned_strides(model)
    for name, value in after.items():
        if name == "head_pool":
            # Global average pooling reads only the DC bin, whose mask is always 1: a head
            # DiffStride gets no gradient from the task loss (only from a resolution penalty).
            assert value == pytest.approx(before[name], abs=1e-5)
        else:
            assert value != before[name], f"stride of {name} did not move"


def test_a_head_diffstride_learns_only_through_a_resolution_penalty():
    model = build_model("diffstride2")
    head = model.head_pool.stride
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    assert torch.all(head.grad.abs() < 1e-6)  # zero up to float32 rounding
    (1.0 / model.head_pool.stride_pair().prod()).backward()
    assert torch.all(head.grad < 0)


def test_diffstride_placement_follows_the_note():
    model = build_model("diffstride", (1, 1, 1, 3, 1))
    names = [n for n, m in model.named_modules() if isinstance(m, DiffStride2d)]
    # After the stem and in the first block of stages 2-4, even where the entry is 1.
    assert names == ["stem_pool", "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"]
    assert learned_strides(model)["layer3.0.downsample"] == [3.0, 3.0]
    block = model.layer2[0]
    assert block.shortcut is not None and block.conv1.stride == (1, 1)
    assert model.layer1[0].downsample is None and model.layer1[0].shortcut is None


def test_one_layer_instance_serves_main_branch_and_shortcut():
    model = build_model("diffstride", (1, 1, 2, 2, 2)).eval()
    block = model.layer2[0]
    calls = []
    block.downsample.register_forward_hook(lambda m, i, o: calls.append(o.shape[-2:]))
    model(torch.randn(1, 3, 32, 32))
    assert calls == [(24, 24), (24, 24)]  # main branch (128 ch) and shortcut (64 ch)


@pytest.mark.parametrize("variant, head", [("hybrid", SpectralPool2d), ("diffstride2", DiffStride2d)])
def test_head_layers(variant, head):
    model = build_model(variant, head_stride=3.0)
    assert isinstance(model.head_pool, head)
    for plain in ("resnet18", "spectral", "diffstride"):
        assert build_model(plain).head_pool is None


def test_resnet18_uses_strided_convolutions():
    model = build_model("resnet18", (2, 1, 2, 2, 2))
    assert model.stem[0].stride == (2, 2)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].shortcut[0].stride == (2, 2)
    assert not any(isinstance(m, (DiffStride2d, SpectralPool2d)) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pre_activation_blocks_and_other_input_sizes(variant):
    model = build_model(variant, (1, 2, 2, 2, 2), num_classes=100, block="pre")
    assert model(torch.randn(2, 3, 48, 40)).shape == (2, 100)  # adaptive global pooling


def test_hartley_spectral_variant_and_diffstride_options():
    spectral = build_model("spectral", spectral_transform="hartley")
    assert {m.transform for m in spectral.modules() if isinstance(m, SpectralPool2d)} == {"hartley"}
    model = build_model("hybrid", head_transform="fourier", smoothness=2.0, shared_stride=True)
    assert model.head_pool.transform == "fourier"
    assert all(p.shape == (1,) for p in stride_parameters(model))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_model("resnet50"), "unknown variant 'resnet50'"),
        (lambda: build_model("hybrid", (1, 1, 2, 2)), "5 numbers"),
        (lambda: build_model("hybrid", (1, 1, 2, 2, 0)), r"\[1, 64\)"),
        (lambda: build_model("hybrid", "1,1,2,2,2x"), "5 numbers"),
        (lambda: build_model("resnet18", (1, 1, 2.5, 2, 2)), "integer strides"),
        (lambda: build_model("hybrid", num_classes=0), "num_classes"),
        (lambda: build_model("hybrid", block="middle"), "block"),
        (lambda: build_model("hybrid", head="spectral"), "set by the variant"),
    ],
)
def test_bad_model_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_model_inputs():
    model = build_model("hybrid")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="at least 8x8"):
        model(torch.randn(1, 3, 4, 4))
