"""The ResNet-18 variants: placement of the layers, every stride tuple, training steps, errors,
the injected layers, the stride validator, and the block layer's one name (``spectral_pool``)."""
from functools import partial

import pytest
import torch

from hybrid_model import (
    PAPER_STRIDES,
    PAPER_VARIANTS,
    VARIANTS,
    DiffStride2d,
    SpectralGain2d,
    SpectralPool2d,
    SpectralResNet,
    build_model,
    learned_strides,
    parse_strides,
    stride_parameters,
    validate_strides,
)
from hybrid_model.resnet import BasicBlock, PreActBlock


@pytest.mark.parametrize("strides", PAPER_STRIDES)
@pytest.mark.parametrize("variant", sorted(PAPER_VARIANTS))  # diffstride_scaled: tests/test_head.py
def test_every_variant_and_stride_tuple_trains_with_strides_changing(variant, strides):
    torch.manual_seed(0)
    # The paper's width (64) at the default strides, the bundled models'; a quarter width (the
    # same layers and graph, 1/16 of the weights: ~8x less CPU) for the other tuples.
    width = 64 if tuple(strides) == tuple(PAPER_STRIDES[0]) else 16
    model = build_model(variant, strides, num_classes=10, width=width)
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
    has_diffstride = VARIANTS[variant].pool is DiffStride2d
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
    assert names == ["stem_pool", "layer2.0.spectral_pool", "layer3.0.spectral_pool", "layer4.0.spectral_pool"]
    assert learned_strides(model)["layer3.0.spectral_pool"] == [3.0, 3.0]
    block = model.layer2[0]
    assert block.shortcut is not None and block.conv1.stride == (1, 1)
    assert model.layer1[0].spectral_pool is None and model.layer1[0].shortcut is None


def test_one_layer_instance_serves_main_branch_and_shortcut():
    model = build_model("diffstride", (1, 1, 2, 2, 2)).eval()
    block = model.layer2[0]
    calls = []
    block.spectral_pool.register_forward_hook(lambda m, i, o: calls.append(o.shape[-2:]))
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


@pytest.mark.parametrize("variant, block", [("resnet18", "post"), ("hybrid", "post"), ("diffstride2", "pre")])
def test_width_scales_every_stage(variant, block):
    """``width`` is the channels of the stem and stage 1; stages 2-4 double it each time
    (the default, 64, is ResNet-18: 11.17M parameters with a 10-class classifier)."""
    narrow, full = build_model(variant, width=16, block=block), build_model(variant, block=block)
    _, features = narrow.forward_features(torch.randn(2, 3, 32, 32))
    assert [features[name].shape[1] for name in ("stem", "layer1", "layer2", "layer3", "layer4")] == [16, 16, 32, 64, 128]
    assert narrow.fc.in_features == 128 and full.fc.in_features == 512
    assert full.stem[0].out_channels == 64 and full.layer4[1].conv2.out_channels == 512
    if variant == "resnet18":
        assert sum(p.numel() for p in full.parameters()) == 11_173_962
    # Conv weights scale with width squared: a quarter width has about 1/16 of the parameters.
    ratio = sum(p.numel() for p in narrow.parameters()) / sum(p.numel() for p in full.parameters())
    assert 1 / 17 < ratio < 1 / 15


@pytest.mark.parametrize("variant, block", [("resnet18", "post"), ("hybrid", "post"), ("diffstride", "pre")])
def test_zero_init_residual_starts_every_block_as_its_shortcut(variant, block):
    """``zero_init_residual``: each residual branch ends in a zero (the post-activation block's
    last BatchNorm scale, the pre-activation block's last convolution), so each block computes
    its shortcut alone (post: ``relu(shortcut)``); everything else is initialised as without it."""
    torch.manual_seed(0)
    plain = build_model(variant, width=8, block=block)
    torch.manual_seed(0)
    zeroed = build_model(variant, width=8, block=block, zero_init_residual=True)
    blocks = [m for m in zeroed.modules() if isinstance(m, (BasicBlock, PreActBlock))]
    assert len(blocks) == 8
    last = [b.conv2.weight if block == "pre" else b.bn2.weight for b in blocks]
    assert all(torch.count_nonzero(w) == 0 for w in last)
    differing = {k for k, v in plain.state_dict().items() if not torch.equal(v, zeroed.state_dict()[k])}
    assert differing == {n for n, p in zeroed.named_parameters() if any(p is w for w in last)}
    zeroed.eval()
    x = torch.randn(2, 8, 16, 16)
    layer = zeroed.layer1[1]  # an identity-shortcut block
    expected = torch.relu(x) if block == "post" else x
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_model("hybrid", width=0), "width must be a positive integer"),
        (lambda: build_model("hybrid", width=2.5), "width must be a positive integer"),
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


def test_an_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="'foo'"):
        build_model("hybrid", foo=1)


def test_bad_model_inputs():
    model = build_model("hybrid")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="at least 8x8"):
        model(torch.randn(1, 3, 4, 4))


# --- one list of variants ---------------------------------------------------------------
def test_the_variant_names_have_one_list():
    """``serving.variants`` names the variants (torch-free readers need them); ``VARIANTS``
    gives each its layers, in the same order, and everything else reads one of the two."""
    import conftest
    import serving.variants
    from gpu_window import __main__ as gpu_window_cli
    from training import report

    assert serving.variants.VARIANT_NAMES == tuple(VARIANTS)
    assert conftest.VARIANTS is gpu_window_cli.PAPER_VARIANTS is PAPER_VARIANTS is serving.variants.PAPER_VARIANTS
    assert report.VARIANT_LABELS is serving.variants.VARIANT_LABELS
    assert PAPER_VARIANTS == ("resnet18", "spectral", "diffstride", "hybrid", "diffstride2")
    assert [name for name in VARIANTS if VARIANTS[name].head_has_transform] == ["hybrid", "diffstride_scaled"]


# --- injected layers ----------------------------------------------------------------------
def test_the_network_takes_its_layers_as_factories():
    model = SpectralResNet(
        (1, 1, 2, 1, 2), pool_layer=partial(SpectralPool2d, transform="hartley"),
        head_layer=partial(SpectralGain2d, transform="fourier"), head_stride=3.0, block=PreActBlock,
    )
    pools = {n: m for n, m in model.named_modules() if isinstance(m, SpectralPool2d)}
    # Fixed pooling only where the stride is not 1 (no pool_at_unit_stride).
    assert list(pools) == ["layer2.0.spectral_pool", "layer4.0.spectral_pool"]
    assert all(m.transform == "hartley" for m in pools.values())
    assert model.head_pool.stride == (3.0, 3.0) and model.head_pool.transform == "fourier"
    assert isinstance(model.layer1[0], PreActBlock) and len(model.stem) == 1  # no BN-ReLU before pre-activation blocks
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    learned = SpectralResNet((1, 1, 2, 1, 2), pool_layer=DiffStride2d, pool_at_unit_stride=True)
    assert list(learned_strides(learned)) == ["stem_pool", "layer2.0.spectral_pool", "layer3.0.spectral_pool",
                                              "layer4.0.spectral_pool"]
    plain = SpectralResNet((2, 1, 2, 2, 2))  # no pool_layer: strided convolutions
    assert plain.stem[0].stride == (2, 2) and not any(isinstance(m, SpectralPool2d) for m in plain.modules())


# --- the stride validator (model, training CLI, checkpoint reader) -------------------------
def test_parse_and_validate_strides():
    assert parse_strides("1,1,2,2,2") == (1.0, 1.0, 2.0, 2.0, 2.0)
    assert parse_strides(" 1, 1.5,2 ,2,63.5") == (1.0, 1.5, 2.0, 2.0, 63.5)
    assert validate_strides([1, 1, 2, 2, 3]) == (1.0, 1.0, 2.0, 2.0, 3.0)
    assert validate_strides((2, 1, 2, 2, 2), integer=True) == (2.0, 1.0, 2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parse_strides("1,1,2,2"), "5 comma-separated numbers"),
        (lambda: parse_strides("1,1,x,2,2"), "5 comma-separated numbers"),
        (lambda: parse_strides("0.5,1,2,2,2"), r"\[1, 64\)"),
        (lambda: parse_strides("1,1,2,2,nan"), r"\[1, 64\)"),
        (lambda: parse_strides("1,1,2,2,inf"), r"\[1, 64\)"),
        (lambda: validate_strides("11222"), "5 numbers"),  # a string is not five numbers
        (lambda: validate_strides(None), "5 numbers"),
        (lambda: validate_strides((1, 1, 2, 2, 64)), r"\[1, 64\)"),
        (lambda: validate_strides((1, 1, 1.5, 2, 2), integer=True), "integer strides"),
    ],
)
def test_bad_strides(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- the block's layer has one name, spectral_pool (the rename maps are gone) ---------------
def _old_style(state: dict) -> dict:
    """``state`` as checkpoints wrote it when the block's spectral layer was ``downsample``."""
    return {k.replace(".spectral_pool.", ".downsample."): v for k, v in state.items()}


@pytest.mark.parametrize("variant, block", [("hybrid", "post"), ("spectral", "post"), ("diffstride2", "pre")])
def test_state_dicts_round_trip_under_the_current_names_only(variant, block):
    torch.manual_seed(0)
    trained = build_model(variant, (1, 1, 2, 3, 2), block=block).eval()
    with torch.no_grad():
        for parameter in stride_parameters(trained):
            parameter.add_(0.3)  # learned strides differ from the fresh model's
    state = trained.state_dict()
    assert not any(".downsample." in key for key in state)
    torch.manual_seed(1)
    fresh = build_model(variant, (1, 1, 2, 3, 2), block=block).eval()
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert learned_strides(fresh) == learned_strides(trained)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)
    old = _old_style(state)
    if variant != "spectral":  # fixed pooling has no state: nothing to rename
        assert "layer2.0.downsample.stride" in old
        # The old name is not read any more: such a checkpoint fails as any foreign key does.
        with pytest.raises(RuntimeError, match="Unexpected key.*downsample"):
            build_model(variant, (1, 1, 2, 3, 2), block=block).load_state_dict(old)


def test_the_rename_maps_are_gone():
    import hybrid_model
    import serving.cards
    from hybrid_model import resnet

    for module in (hybrid_model, resnet, serving.cards):
        assert not hasattr(module, "upgrade_state_dict") and not hasattr(module, "layer_name")
        assert not any("LEGACY_NAME" in name or "LEGACY_LAYER" in name for name in vars(module))
    model = build_model("diffstride")
    state = model.state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**state, "layer2.1.downsample.stride": torch.ones(2)})
