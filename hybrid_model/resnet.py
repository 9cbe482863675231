"""CIFAR ResNet-18 with configurable downsampling (strided conv, spectral pooling, DiffStride).

Placement follows ``docs/layers.md``: a stride 5-tuple
``(stem, stage1, stage2, stage3, stage4)``; DiffStride layers sit after the stem and in the
first block of stages 2-4 (one instance shared by the main branch and the 1x1 shortcut),
even when their entry is 1; an optional head layer sits before global average pooling.

What a head does to the classifier (proved in ``tests/test_head.py``): global average
pooling reads only the DC bin, which fixed spectral pooling keeps, so
``GAP(SpectralPool2d(x)) = c * GAP(x)`` exactly (``c = HW/(h*w)`` for Fourier,
``sqrt(HW/(h*w))`` for the orthonormal Hartley pooling), and a DiffStride head (whose DC
mask is always 1) is the identity on what GAP sees. So ``hybrid`` is ``diffstride`` with
the classifier's input scaled by ``c``, which the ablation variant ``diffstride_scaled``
does with :class:`SpectralGain2d` and no head layer; ``diffstride2`` is ``diffstride``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .layers import DiffStride2d, SpectralPool2d

__all__ = [
    "VARIANTS", "PAPER_VARIANTS", "HEAD_KINDS", "PAPER_STRIDES", "SpectralGain2d", "SpectralResNet", "build_model",
    "spectral_gain", "stride_parameters", "learned_strides", "build_from_card",
]

#: variant -> (downsampling kind, head kind)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "resnet18": ("conv", None),
    "spectral": ("spectral", None),
    "diffstride": ("diffstride", None),
    "hybrid": ("diffstride", "spectral"),
    "diffstride2": ("diffstride", "diffstride"),
    # Ablation: the hybrid's head replaced by the constant it multiplies GAP's output by.
    "diffstride_scaled": ("diffstride", "scale"),
}
#: The five variants of the papers' tables (the others are ablations).
PAPER_VARIANTS: tuple[str, ...] = ("resnet18", "spectral", "diffstride", "hybrid", "diffstride2")
#: Head kinds: an extra layer before global average pooling (``None``: none).
HEAD_KINDS = (None, "spectral", "diffstride", "scale")
TRANSFORMS = ("fourier", "hartley")
#: The hybrid paper's Algorithm 1 defines its spectral pooling with the Hartley transform.
DEFAULT_HEAD_TRANSFORM = "hartley"

#: The stride tuples of the papers' tables.
PAPER_STRIDES: tuple[tuple[int, ...], ...] = (
    (1, 1, 2, 2, 2),
    (1, 1, 2, 2, 3),
    (1, 1, 1, 3, 1),
    (1, 1, 3, 1, 3),
    (1, 1, 3, 1, 2),
    (1, 1, 3, 2, 3),
)

DOWNSAMPLING_KINDS = ("conv", "spectral", "diffstride")
STAGE_CHANNELS = (64, 128, 256, 512)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016a), as in both papers.

    ``downsample`` (a spectral layer or ``None``) follows the first 3x3 conv and also feeds
    the shortcut, so both branches have identical sizes; ``conv_stride`` is used by the plain
    strided-conv model instead. Shape: ``(B, in_ch, H, W) -> (B, out_ch, h, w)``.
    """

    def __init__(self, in_ch: int, out_ch: int, conv_stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, conv_stride)
        self.downsample = downsample
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if conv_stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv1x1(in_ch, out_ch, conv_stride), nn.BatchNorm2d(out_ch))

    def _resample(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self._resample(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        # The spectral layer is per-channel and linear, so it commutes with the 1x1 conv:
        # applying it first costs less (fewer channels).
        identity = self._resample(x)
        if self.shortcut is not None:
            identity = self.shortcut(identity)
        return self.relu(out + identity)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016b), as the public DiffStride code uses today."""

    def __init__(self, in_ch: int, out_ch: int, conv_stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, conv_stride)
        self.downsample = downsample
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if conv_stride != 1 or in_ch != out_ch:
            self.shortcut = conv1x1(in_ch, out_ch, conv_stride)

    def _resample(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        # Projection shortcuts take the pre-activated input; identity ones the raw input.
        identity = self._resample(x if self.shortcut is None else pre)
        if self.shortcut is not None:
            identity = self.shortcut(identity)
        out = self._resample(self.conv1(pre))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


def spectral_gain(size: tuple[int, int], stride: tuple[float, float], transform: str) -> float:
    """``GAP(SpectralPool2d(x)) / GAP(x)`` for an ``H x W`` input: the pooling's DC gain.

    Only the DC bin reaches the mean and it passes the crop unchanged, so the ratio is the
    normalisation alone: ``HW/(h*w)`` for Fourier (unscaled ``rfft2``, ``1/(h*w)``
    ``irfft2``) and ``sqrt(HW/(h*w))`` for Hartley (orthonormal DHT both ways), with
    ``(h, w)`` the pooled size. Plain Python (traceable); ``tests/test_head.py`` checks it
    against the layer.
    """
    h_out, w_out = SpectralPool2d(stride, transform=transform).output_size(size)
    ratio = size[0] * size[1] / (h_out * w_out)
    return ratio if transform == "fourier" else math.sqrt(ratio)


class SpectralGain2d(nn.Module):
    """Multiply by the gain a :class:`SpectralPool2d` head would give global average pooling.

    ``y = c(H, W) * x`` with ``c = GAP(SpectralPool2d(stride, transform)(x)) / GAP(x)``, a
    constant per input size (4.5 for Fourier and 2.0 for Hartley at 18x18, stride 2). Put
    before global average pooling, it gives the classifier exactly what a spectral pooling
    head would, without the pooling: the ``diffstride_scaled`` ablation. No parameters.
    Shape: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, stride: float | Sequence[float] = 2.0, transform: str = "hartley") -> None:
        super().__init__()
        pool = SpectralPool2d(stride, transform=transform)  # validates both arguments
        self.stride, self.transform = pool.stride, pool.transform

    def gain(self, size: tuple[int, int]) -> float:
        return spectral_gain((int(size[0]), int(size[1])), self.stride, self.transform)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, transform={self.transform!r}"

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain(tuple(x.shape[-2:]))


def _check_strides(strides: Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in strides)
    except (TypeError, ValueError):
        raise ValueError(f"strides must be 5 numbers (stem, stage1..stage4), got {strides!r}") from None
    if len(values) != 5:
        raise ValueError(f"strides must be 5 numbers (stem, stage1..stage4), got {len(values)}: {strides!r}")
    if not all(1.0 <= s < 64 for s in values):
        raise ValueError(f"every stride must be in [1, 64), got {strides!r}")
    return values


class SpectralResNet(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, stages of 64/128/256/512 channels, two blocks each).

    Args:
        strides: ``(stem, stage1, stage2, stage3, stage4)``.
        downsampling: ``"conv"`` (strided convs; strides must be integers), ``"spectral"``
            (fixed spectral pooling) or ``"diffstride"``.
        head: ``None``, ``"spectral"``, ``"diffstride"`` or ``"scale"``: an extra layer before
            global average pooling with stride ``head_stride`` (``"scale"``: no layer, only
            the constant a spectral head would multiply GAP's output by, :class:`SpectralGain2d`).
        block: ``"post"`` (standard, default) or ``"pre"`` (pre-activation).
        smoothness, shared_stride, lower_limit, upper_limit: DiffStride options.
        spectral_transform: ``"fourier"`` (default, the DiffStride paper's baseline) or
            ``"hartley"``: the transform of the body's fixed spectral pooling.
        head_transform: ``"hartley"`` (default, the hybrid paper's Algorithm 1) or
            ``"fourier"``: the transform of a spectral (or ``"scale"``) head. Separate from
            ``spectral_transform`` because the two papers define the two layers differently.

    ``forward(x)``: ``(B, 3, H, W) -> (B, num_classes)``; ``forward_features(x)`` also
    returns the feature map of each stage (``FEATURE_NAMES``).
    """

    def __init__(
        self,
        strides: Sequence[float] = (1, 1, 2, 2, 2),
        num_classes: int = 10,
        downsampling: str = "diffstride",
        head: str | None = None,
        head_stride: float = 2.0,
        block: str = "post",
        smoothness: float = 4.0,
        shared_stride: bool = False,
        lower_limit: float = 1.0,
        upper_limit: float | None = None,
        spectral_transform: str = "fourier",
        head_transform: str = DEFAULT_HEAD_TRANSFORM,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.strides = _check_strides(strides)
        if downsampling not in DOWNSAMPLING_KINDS:
            raise ValueError(f"downsampling must be one of {DOWNSAMPLING_KINDS}, got {downsampling!r}")
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {head!r}")
        for option, value in (("spectral_transform", spectral_transform), ("head_transform", head_transform)):
            if value not in TRANSFORMS:
                raise ValueError(f"{option} must be one of {TRANSFORMS}, got {value!r}")
        if block not in ("post", "pre"):
            raise ValueError(f"block must be 'post' or 'pre', got {block!r}")
        if downsampling == "conv" and not all(s.is_integer() for s in self.strides):
            raise ValueError(f"strided convolutions need integer strides, got {strides!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.in_channels = in_channels
        self.downsampling, self.head_kind, self.block = downsampling, head, block
        diffstride_kwargs = dict(
            smoothness=smoothness, shared_stride=shared_stride, lower_limit=lower_limit, upper_limit=upper_limit
        )

        def spectral_layer(kind: str, stride: float, transform: str = spectral_transform) -> nn.Module:
            if kind == "diffstride":
                return DiffStride2d(stride, **diffstride_kwargs)
            if kind == "scale":
                return SpectralGain2d(stride, transform)
            return SpectralPool2d(stride, transform=transform)

        def resampler(stride: float, always: bool) -> nn.Module | None:
            """The downsampling layer of one point (``None`` for strided convs or stride 1)."""
            if downsampling == "conv" or (stride == 1 and not (always and downsampling == "diffstride")):
                return None
            return spectral_layer(downsampling, stride)

        stem_stride = int(self.strides[0]) if downsampling == "conv" else 1
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=stem_stride, padding=1, bias=False),
            *([] if block == "pre" else [nn.BatchNorm2d(64), nn.ReLU(inplace=True)]),
        )
        self.stem_pool = resampler(self.strides[0], always=True)
        block_cls: Callable[..., nn.Module] = BasicBlock if block == "post" else PreActBlock
        in_ch = 64
        for index, (out_ch, stride) in enumerate(zip(STAGE_CHANNELS, self.strides[1:]), start=1):
            # Stage 1 keeps its size unless its entry asks otherwise; stages 2-4 always hold
            # a DiffStride layer in the DiffStride model, even at stride 1.
            conv_stride = int(stride) if downsampling == "conv" else 1
            first = block_cls(in_ch, out_ch, conv_stride, resampler(stride, always=index > 1))
            setattr(self, f"layer{index}", nn.Sequential(first, block_cls(out_ch, out_ch)))
            in_ch = out_ch
        self.final_act = nn.Sequential(nn.BatchNorm2d(512), nn.ReLU(inplace=True)) if block == "pre" else nn.Identity()
        self.head_pool = None if head is None else spectral_layer(head, head_stride, head_transform)
        self.pool = nn.AdaptiveAvgPool2d(1)  # adaptive: DiffStride's map sizes vary with the strides
        self.fc = nn.Linear(512, num_classes)
        self._init_weights()

    FEATURE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected a batch of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < 8:
            raise ValueError(f"images must be at least 8x8, got {tuple(x.shape[-2:])}")

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits ``(B, num_classes)`` and each stage's output feature map ``{name: (B, C, h, w)}``."""
        self._check_input(x)
        features: dict[str, Tensor] = {}
        x = self.stem(x)
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        features["stem"] = x
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            features[f"layer{index}"] = x
        x = self.final_act(x)
        if self.head_pool is not None:
            x = self.head_pool(x)
            features["head"] = x
        logits = self.fc(torch.flatten(self.pool(x), 1))
        return logits, features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def build_model(variant: str, strides: Sequence[float] = (1, 1, 2, 2, 2), num_classes: int = 10, **options) -> SpectralResNet:
    """Build a named variant: ``resnet18``, ``spectral``, ``diffstride``, ``hybrid``, ``diffstride2``.

    ``diffstride_scaled`` is the ablation ``diffstride`` + :class:`SpectralGain2d` (what the
    hybrid's head does to the classifier, without the head). ``options`` are passed to
    :class:`SpectralResNet` (``smoothness``, ``block``, ``head_stride``,
    ``spectral_transform``, ``head_transform``, ``shared_stride``, ...).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    for fixed in ("downsampling", "head"):
        if fixed in options:
            raise ValueError(f"option {fixed!r} is set by the variant name; use SpectralResNet directly to override it")
    downsampling, head = VARIANTS[variant]
    model = SpectralResNet(strides, num_classes, downsampling=downsampling, head=head, **options)
    model.variant = variant
    return model


#: The head transform of cards written before Hartley became the default (they name none).
LEGACY_HEAD_TRANSFORM = "fourier"


def build_from_card(card: dict) -> SpectralResNet:
    """:func:`build_model` from a run card's ``variant``, ``strides``, ``num_classes``, ``options``.

    A card of a spectral-head variant that names no ``head_transform`` predates the Hartley
    default: its head was Fourier, and rebuilding it with Hartley would change what the
    trained classifier sees (4.5x vs 2x at 18x18).
    """
    options = dict(card.get("options") or {})
    if VARIANTS.get(card["variant"], (None, None))[1] == "spectral":
        options.setdefault("head_transform", LEGACY_HEAD_TRANSFORM)
    return build_model(card["variant"], tuple(card["strides"]), card.get("num_classes", 10), **options)


def stride_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable strides of every ``DiffStride2d`` in ``model`` (empty if none)."""
    return [m.stride for m in model.modules() if isinstance(m, DiffStride2d)]


def learned_strides(model: nn.Module) -> dict[str, list[float]]:
    """``{layer name: [s_h, s_w]}`` of every ``DiffStride2d`` in ``model``."""
    return {
        name: [float(v) for v in m.stride_pair().detach().cpu()]
        for name, m in model.named_modules()
        if isinstance(m, DiffStride2d)
    }
