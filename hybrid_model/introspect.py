"""Looking inside a model: its downsampling layers, head, feature maps, cost, and freezing.

Used by the exporter (layer table, cost, frozen copy) and the training cards (head, transforms).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import DiffStride2d, FixedSeparable2d, SpectralGain2d, SpectralPool2d, spectral_gain
from .spectral import AxisCrop

__all__ = [
    "LayerInfo", "describe_downsampling", "describe_head", "layer_transforms", "model_cost", "freeze",
    "forward_features",
]


@dataclass
class LayerInfo:
    """One downsampling point of a model, at its current strides.

    ``crop`` is ``(height, width)`` :class:`AxisCrop` in frequency bins of the input map
    (``None`` for strided convolutions); for fixed spectral pooling the pass band and the cut
    coincide (no ramp).
    """

    name: str
    stage: str
    kind: str
    stride: tuple[float, float]
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    crop: tuple[AxisCrop, AxisCrop] | None

    def to_dict(self) -> dict:
        return asdict(self)


def _stage_of(name: str) -> str:
    if name.startswith("layer"):
        return name.split(".")[0]
    return "head" if name.startswith("head") else "stem"


def _is_downsampling(module: nn.Module) -> bool:
    if isinstance(module, (DiffStride2d, SpectralPool2d)):
        return True
    return isinstance(module, nn.Conv2d) and module.stride != (1, 1)


def _fixed_pool_crop(layer: SpectralPool2d, size: tuple[int, int], out: tuple[int, int]) -> tuple[AxisCrop, AxisCrop]:
    kept_w = out[1] // 2 + 1 if layer.transform == "fourier" else out[1]
    return (
        AxisCrop(size[0], out[0] / 2, out[0] / 2, out[0], out[0]),
        AxisCrop(size[1], out[1] / 2, out[1] / 2, kept_w, out[1]),
    )


def _layer_info(name: str, module: nn.Module, in_size: tuple[int, int], out_size: tuple[int, int]) -> LayerInfo:
    if isinstance(module, DiffStride2d):
        stride = tuple(float(s) for s in module.stride_pair().detach())
        return LayerInfo(name, _stage_of(name), "diffstride", stride, in_size, out_size, module.crop(in_size))
    if isinstance(module, SpectralPool2d):
        crop = _fixed_pool_crop(module, in_size, out_size)
        return LayerInfo(name, _stage_of(name), f"spectral-{module.transform}", module.stride, in_size, out_size, crop)
    stride = tuple(float(s) for s in module.stride)
    return LayerInfo(name, _stage_of(name), "conv", stride, in_size, out_size, None)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode and no grad for a probe forward (BN statistics must not move)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _probe_input(model: nn.Module, input_size: tuple[int, int]) -> Tensor:
    param = next(model.parameters())
    in_channels = getattr(model, "in_channels", 3)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, in_channels, *input_size, generator=generator).to(param.device, param.dtype)


def describe_downsampling(model: nn.Module, input_size: tuple[int, int] = (32, 32)) -> list[LayerInfo]:
    """Every downsampling layer of ``model`` in forward order, with sizes, strides and crops.

    Runs one probe forward (eval mode, batch 1) of an ``input_size`` image. A DiffStride
    layer's stride is projected for its input size by that forward, as in training.
    """
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    hooks = []
    for name, module in model.named_modules():
        if _is_downsampling(module):
            def record(mod, inputs, output, name=name):
                sizes[name] = (tuple(inputs[0].shape[-2:]), tuple(output.shape[-2:]))

            hooks.append(module.register_forward_hook(record))
    try:
        with _eval_mode(model):
            model(_probe_input(model, input_size))
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    return [_layer_info(name, modules[name], *io) for name, io in sizes.items()]


def layer_transforms(model: nn.Module) -> dict[str, str]:
    """``{layer name: transform}`` of every spectral layer: ``"fourier"`` for DiffStride
    (rfft2), the pooling's own transform for :class:`SpectralPool2d`, and for the
    ``diffstride_scaled`` ablation's gain the transform of the head it stands in for."""
    transforms = {}
    for name, module in model.named_modules():
        if isinstance(module, DiffStride2d):
            transforms[name] = "fourier"
        elif isinstance(module, (SpectralPool2d, SpectralGain2d)):
            transforms[name] = module.transform
    return transforms


#: What a head before global average pooling does, by kind (tests/test_head.py proves it).
HEAD_EFFECT = {
    "spectral": "GAP keeps only the DC bin, which the pooling passes: the head multiplies the classifier's input by gap_gain",
    "diffstride": "the DC bin passes with mask 1: the head multiplies the classifier's input by gap_gain "
                  "(1 where it keeps the whole map) and its stride gets no gradient from the task loss",
    "scale": "no head layer: the classifier's input is multiplied by the gain a spectral-pooling head would apply",
}


def describe_head(model: nn.Module, input_size: tuple[int, int] = (32, 32)) -> dict | None:
    """The layer before global average pooling (``model.head_pool``), or ``None`` if there is none.

    ``{"kind", "transform", "in_size", "out_size", "gap_gain", "effect"}`` where
    ``gap_gain = GAP(head(x)) / GAP(x)`` (exact, from the layer's normalisation) at the
    sizes of a probe forward with the current strides (the head's input size follows the
    learned strides).
    """
    head = getattr(model, "head_pool", None)
    if head is None:
        return None
    seen: dict[str, Tensor] = {}

    def record(module, inputs, output):
        seen["in"], seen["out"] = inputs[0], output

    hook = head.register_forward_hook(record)
    try:
        with _eval_mode(model):
            model(_probe_input(model, input_size))
    finally:
        hook.remove()
    in_size, out_size = tuple(seen["in"].shape[-2:]), tuple(seen["out"].shape[-2:])
    if isinstance(head, DiffStride2d):  # Fourier normalisation of its crop
        kind, gain = "diffstride", in_size[0] * in_size[1] / (out_size[0] * out_size[1])
    elif isinstance(head, SpectralPool2d):
        kind, gain = "spectral", spectral_gain(in_size, head.stride, head.transform)
    else:
        kind, gain = "scale", head.gain(in_size)
    return {
        "kind": kind,
        "transform": layer_transforms(model).get("head_pool"),
        "in_size": list(in_size),
        "out_size": list(out_size),
        "gap_gain": gain,
        "effect": HEAD_EFFECT[kind],
    }


def forward_features(model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and per-stage feature maps (``model.forward_features``), in eval mode."""
    with _eval_mode(model):
        return model.forward_features(x)


def model_cost(model: nn.Module, input_size: tuple[int, int] = (32, 32)) -> dict[str, int]:
    """FLOPs (2 per multiply-add, counted by ``FlopCounterMode``), activation memory and
    parameter count of one ``input_size`` image at the current strides (float32 bytes)."""
    activation_elements = 0

    def count(module, inputs, output):
        nonlocal activation_elements
        if isinstance(output, Tensor):
            activation_elements += output.numel()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    counter = FlopCounterMode(display=False)
    try:
        with _eval_mode(model), counter:
            model(_probe_input(model, input_size))
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "flops": int(counter.get_total_flops()),
        "activation_bytes": int(activation_elements * 4),
        "params": int(sum(p.numel() for p in model.parameters())),
    }


def freeze(model: nn.Module, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """A copy of ``model`` with every spectral layer replaced by :class:`FixedSeparable2d`.

    The copy computes the same function for ``input_size`` images with static shapes and
    plain matrix products (learned strides frozen), which is what ONNX export needs.
    """
    frozen = copy.deepcopy(model).eval()
    infos = {info.name: info for info in describe_downsampling(frozen, input_size)}
    for name, module in list(frozen.named_modules()):
        if not isinstance(module, (DiffStride2d, SpectralPool2d)):
            continue
        in_size = infos[name].in_size
        if isinstance(module, DiffStride2d):
            left, right = module.operators(in_size)
        else:
            left, right = module.operators(in_size, torch.float32, module_device(frozen))
        parent_name, _, attr = name.rpartition(".")
        parent = frozen.get_submodule(parent_name) if parent_name else frozen
        setattr(parent, attr, FixedSeparable2d(left, right, in_size, source=infos[name].kind))
    return frozen


def module_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
