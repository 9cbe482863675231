"""hybrid_model/resnet.py in torchvision's shape (issue 24): explicit ``layer1`` .. ``layer4``
from ``_make_layer``, an injected ``norm_layer``, the variant a constructor argument, and
the same networks as before, bit for bit.

The reference is ``resnet.py`` as it was before the reshaping (commit :data:`BEFORE`, read
with ``git show`` and loaded beside the current ``hybrid_model.layers``): with the same seed,
both build every variant with the same state-dict keys and tensors, module names and outputs.
"""
from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from functools import partial

import pytest
import torch
from torch import nn

import hybrid_model
from hybrid_model import VARIANTS, SpectralResNet, build_model, resnet
from serving.paths import REPO_ROOT

#: The last commit of the setattr/getattr resnet.py (before issue 24 reshaped it).
BEFORE = "ad5a79c965094180bd9e9dc4325b89be9ec4f7b0"


@pytest.fixture(scope="module")
def before():
    """``hybrid_model/resnet.py`` at :data:`BEFORE`, as a module of the ``hybrid_model`` package."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "show", f"{BEFORE}:hybrid_model/resnet.py"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git or commit {BEFORE[:8]} not available (a shallow clone or an sdist)")
    name = "hybrid_model._resnet_before_issue24"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "hybrid_model"
    sys.modules[name] = module
    try:
        try:
            exec(compile(source, f"{BEFORE[:8]}:hybrid_model/resnet.py", "exec"), module.__dict__)
        except ImportError as error:  # hybrid_model.layers no longer has what the old file imports
            pytest.skip(f"resnet.py at {BEFORE[:8]} no longer imports: {error}")
        yield module
    finally:
        sys.modules.pop(name, None)


def _build(module, variant, **options):
    torch.manual_seed(0)
    return module.build_model(variant, **options).eval()


def _assert_same_network(old: nn.Module, new: nn.Module) -> None:
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)
    for key, value in old_state.items():
        assert new_state[key].dtype == value.dtype and torch.equal(new_state[key], value), key
    assert [name for name, _ in new.named_modules()] == [name for name, _ in old.named_modules()]
    assert [type(m).__qualname__ for m in new.modules()] == [type(m).__qualname__ for m in old.modules()]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (old_logits, old_features), (new_logits, new_features) = old.forward_features(x), new.forward_features(x)
    assert torch.equal(new_logits, old_logits)
    assert list(new_features) == list(old_features)
    assert all(torch.equal(new_features[k], old_features[k]) for k in old_features)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_the_network_it_was(before, variant):
    """ResNet-18 at full width (64), the default options: same keys, tensors, modules, outputs."""
    assert list(before.VARIANTS) == list(VARIANTS)
    old, new = _build(before, variant), _build(resnet, variant)
    _assert_same_network(old, new)
    assert new.variant == old.variant == variant


#: (block, strides, zero_init_residual): pre-activation, a strided stem, a strided first
#: stage, stride-1 stages and the zero init, each met by every variant.
OPTIONS = [("pre", (2, 1, 2, 2, 2), True), ("post", (1, 2, 1, 3, 1), True), ("pre", (1, 1, 3, 1, 3), False)]


@pytest.mark.parametrize("block, strides, zero_init_residual", OPTIONS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_option_builds_the_same_network(before, variant, block, strides, zero_init_residual):
    """Narrow (width 8), so that the grid stays quick."""
    options = dict(strides=strides, block=block, zero_init_residual=zero_init_residual, width=8)
    old, new = _build(before, variant, **options), _build(resnet, variant, **options)
    _assert_same_network(old, new)
    assert new.variant == old.variant == variant


def test_the_stages_are_explicit_and_made_by_make_layer():
    source = inspect.getsource(resnet)
    assert "setattr(" not in source and "getattr(" not in source
    for index in range(1, 5):
        assert f"self.layer{index} = self._make_layer(" in source
        assert f"self.layer{index}(x)" in inspect.getsource(SpectralResNet.forward_features)
    model = build_model("hybrid", width=8)
    assert [name for name, _ in model.named_children()] == [
        "stem", "stem_pool", "layer1", "layer2", "layer3", "layer4", "final_act", "head_pool", "pool", "fc"]
    assert all(len(getattr(model, f"layer{i}")) == 2 for i in range(1, 5))  # ResNet-18: two blocks a stage
    stage = model._make_layer(resnet.BasicBlock, 16, 3, 2.0)  # torchvision's signature: block, planes, blocks
    assert len(stage) == 3 and isinstance(stage[0].spectral_pool, hybrid_model.DiffStride2d)
    assert stage[1].spectral_pool is None and stage[0].shortcut is not None


@pytest.mark.parametrize("block", ["post", "pre"])
def test_the_norm_layer_is_injected(block):
    torch.manual_seed(0)
    default = build_model("diffstride", width=8, block=block)
    assert any(isinstance(m, nn.BatchNorm2d) for m in default.modules())
    group_norm = partial(nn.GroupNorm, 4)
    model = SpectralResNet(
        pool_layer=hybrid_model.DiffStride2d, pool_at_unit_stride=True, width=8,
        block=resnet.BLOCKS[block], norm_layer=group_norm,
    )
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in norms)
    # Every norm of the default network became a GroupNorm, in the same places.
    assert [n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)] == [
        n for n, m in default.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    block_alone = resnet.BLOCKS[block](8, 16, spectral_pool=None, norm_layer=group_norm)
    assert isinstance(block_alone.bn2, nn.GroupNorm)


def test_the_variant_is_a_constructor_argument():
    assert "variant=variant" in inspect.getsource(build_model)
    assert "model.variant" not in inspect.getsource(resnet)
    assert build_model("spectral", width=8).variant == "spectral"
    assert SpectralResNet(width=8).variant is None
    assert SpectralResNet(width=8, variant="resnet18").variant == "resnet18"


def test_build_from_card_has_one_definition():
    """``hybrid_model.build_from_card`` builds the model a card describes; the checkpoint
    module's function that also loads the weights is ``load_model``."""
    from training import checkpoint

    assert not hasattr(checkpoint, "build_from_card")
    card = {"variant": "diffstride", "strides": [1, 1, 2, 2, 2], "num_classes": 10, "options": {"width": 8}}
    torch.manual_seed(0)
    built = hybrid_model.build_from_card(card)
    from serving.cards import RunCard

    loaded = checkpoint.load_model(RunCard.from_dict(card), built.state_dict(), "a card")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), built.state_dict().values()))
    with pytest.raises(checkpoint.CheckpointError, match="a card: weights do not match"):
        checkpoint.load_model(RunCard.from_dict(card), {}, "a card")
    with pytest.raises(checkpoint.CheckpointError, match="a card: cannot build"):
        checkpoint.load_model(RunCard.from_dict(dict(card, strides=[1, 2])), {}, "a card")
