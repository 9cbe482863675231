"""CIFAR ResNet-18 built from injected downsampling layers (strided conv, spectral pooling, DiffStride).

Shaped like torchvision's ``resnet.py``: :class:`SpectralResNet` builds ``layer1`` ..
``layer4`` with ``_make_layer`` and takes an injected ``norm_layer``; and as timm's
``BasicBlock`` takes an ``aa_layer``, it takes layer factories: ``pool_layer(stride)`` builds
the spectral layer of each downsampling point (``None``: strided convolutions) and
``head_layer(stride)`` an optional layer before global average pooling. :data:`VARIANTS`
names the layer classes of each variant; :func:`build_model` binds their options.

Placement follows ``docs/layers.md``: a stride 5-tuple
``(stem, stage1, stage2, stage3, stage4)``; DiffStride layers sit after the stem and in the
first block of stages 2-4 (one instance shared by the main branch and the 1x1 shortcut),
even when their entry is 1.

What a head does to the classifier (proved in ``tests/test_head.py``): global average
pooling reads only the DC bin, which fixed spectral pooling keeps, so
``GAP(SpectralPool2d(x)) = c * GAP(x)`` exactly (``c = HW/(h*w)`` for Fourier,
``sqrt(HW/(h*w))`` for the orthonormal Hartley pooling), and a DiffStride head (whose DC
mask is always 1) is the identity on what GAP sees. So ``hybrid`` is ``diffstride`` with
the classifier's input scaled by ``c``, which the ablation variant ``diffstride_scaled``
does with :class:`SpectralGain2d` and no head layer; ``diffstride2`` is ``diffstride``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from serving.variants import PAPER_VARIANTS, VARIANT_NAMES

from .layers import DiffStride2d, SpectralGain2d, SpectralPool2d

__all__ = [
    "VARIANTS", "PAPER_VARIANTS", "PAPER_STRIDES", "BLOCKS", "BasicBlock", "PreActBlock", "SpectralResNet", "Variant",
    "build_model", "build_from_card", "learned_strides", "parse_strides", "stride_parameters", "validate_strides",
]

#: ``factory(stride) -> layer``: a layer class, or a ``functools.partial`` of one with its options bound.
LayerFactory = Callable[[float], nn.Module]
#: ``norm_layer(channels) -> layer``, as torchvision's ``norm_layer`` (default ``nn.BatchNorm2d``).
NormLayer = Callable[[int], nn.Module]


@dataclass(frozen=True)
class Variant:
    """The layer classes of one variant.

    ``pool`` sits at each downsampling point (``None``: strided convolutions), ``head``
    before global average pooling (``None``: no layer).
    """

    pool: type[nn.Module] | None
    head: type[nn.Module] | None = None

    @property
    def head_has_transform(self) -> bool:
        """Whether the head takes ``head_transform`` (spectral pooling, or its gain)."""
        return self.head in (SpectralPool2d, SpectralGain2d)


#: The layers of each variant of the catalogue (``serving.variants``: names, order, labels).
VARIANTS: dict[str, Variant] = {
    "resnet18": Variant(pool=None),
    "spectral": Variant(pool=SpectralPool2d),
    "diffstride": Variant(pool=DiffStride2d),
    "hybrid": Variant(pool=DiffStride2d, head=SpectralPool2d),
    "diffstride2": Variant(pool=DiffStride2d, head=DiffStride2d),
    # Ablation: the hybrid's head replaced by the constant it multiplies GAP's output by.
    "diffstride_scaled": Variant(pool=DiffStride2d, head=SpectralGain2d),
}
if tuple(VARIANTS) != VARIANT_NAMES:  # one catalogue: a variant is added in both places, in the same order
    raise ImportError(f"hybrid_model.VARIANTS {tuple(VARIANTS)} does not match serving.variants {VARIANT_NAMES}")
TRANSFORMS = ("fourier", "hartley")
#: The hybrid paper's Algorithm 1 defines its spectral pooling with the Hartley transform.
DEFAULT_HEAD_TRANSFORM = "hartley"
#: The head transform of cards written before Hartley became the default (they name none).
LEGACY_HEAD_TRANSFORM = "fourier"

#: The stride tuples of the papers' tables.
PAPER_STRIDES: tuple[tuple[int, ...], ...] = (
    (1, 1, 2, 2, 2),
    (1, 1, 2, 2, 3),
    (1, 1, 1, 3, 1),
    (1, 1, 3, 1, 3),
    (1, 1, 3, 1, 2),
    (1, 1, 3, 2, 3),
)

#: ResNet-18's channels per stage: ``width`` times these (``width=64``: 64/128/256/512).
STAGE_WIDTHS = (1, 2, 4, 8)
#: ResNet-18's blocks per stage (torchvision's ``layers=[2, 2, 2, 2]``).
STAGE_BLOCKS = (2, 2, 2, 2)
DEFAULT_WIDTH = 64
MAX_STRIDE = 64.0


# --------------------------------------------------------------------------------------
# Strides: one validator for the model, the training CLI and the checkpoint reader
# --------------------------------------------------------------------------------------
def validate_strides(strides: Sequence[float], integer: bool = False) -> tuple[float, ...]:
    """``strides`` as the 5-tuple ``(stem, stage1, stage2, stage3, stage4)`` of floats in ``[1, 64)``.

    ``integer``: strided convolutions need whole numbers. Raises ``ValueError`` (one sentence).
    """
    try:
        if isinstance(strides, (str, bytes)):  # "11222" would pass as five digits
            raise TypeError
        values = tuple(float(s) for s in strides)
    except (TypeError, ValueError):
        raise ValueError(f"strides must be 5 numbers (stem, stage1..stage4), got {strides!r}") from None
    if len(values) != 5:
        raise ValueError(f"strides must be 5 numbers (stem, stage1..stage4), got {len(values)}: {strides!r}")
    if not all(1.0 <= s < MAX_STRIDE for s in values):  # false for NaN and inf too
        raise ValueError(f"every stride must be a number in [1, 64), got {strides!r}")
    if integer and not all(s.is_integer() for s in values):
        raise ValueError(f"strided convolutions need integer strides, got {strides!r}")
    return values


def parse_strides(text: str) -> tuple[float, ...]:
    """``"1,1,2,2,2"`` -> ``(1.0, 1.0, 2.0, 2.0, 2.0)``, checked by :func:`validate_strides`."""
    try:
        values = [float(part) for part in str(text).split(",")]
    except ValueError:
        raise ValueError(f"strides must be 5 comma-separated numbers like 1,1,2,2,2, got {text!r}") from None
    if len(values) != 5:
        raise ValueError(f"strides must be 5 comma-separated numbers (stem,stage1..stage4), got {len(values)} in {text!r}")
    return validate_strides(values)


# --------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------
def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class _SpectralBlock(nn.Module):
    """What both blocks share: an optional spectral layer feeding both branches."""

    #: Pre-activation blocks need a stem without BN-ReLU and a final BN-ReLU.
    preactivation = False
    spectral_pool: nn.Module | None

    def _resample(self, x: Tensor) -> Tensor:
        return x if self.spectral_pool is None else self.spectral_pool(x)


class BasicBlock(_SpectralBlock):
    """Post-activation basic block (He et al. 2016a), as in both papers.

    ``spectral_pool`` (a spectral downsampling layer or ``None``) follows the first 3x3 conv
    and also feeds the shortcut, so both branches have identical sizes; ``conv_stride`` is
    used by the plain strided-conv model instead. ``shortcut`` is the 1x1 projection
    (torchvision's ``downsample``); ``norm_layer``: as torchvision's (default
    ``nn.BatchNorm2d``). Shape: ``(B, in_ch, H, W) -> (B, out_ch, h, w)``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        conv_stride: int = 1,
        spectral_pool: nn.Module | None = None,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv1 = conv3x3(in_ch, out_ch, conv_stride)
        self.spectral_pool = spectral_pool
        self.bn1 = norm_layer(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = norm_layer(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if conv_stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(conv1x1(in_ch, out_ch, conv_stride), norm_layer(out_ch))

    def zero_init_last(self) -> None:
        """Zero the scale of the residual branch's last norm layer: the block starts as its shortcut."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self._resample(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        # The spectral layer is per-channel and linear, so it commutes with the 1x1 conv:
        # applying it first costs less (fewer channels).
        identity = self._resample(x)
        if self.shortcut is not None:
            identity = self.shortcut(identity)
        return self.relu(out + identity)


class PreActBlock(_SpectralBlock):
    """Pre-activation basic block (He et al. 2016b), as the public DiffStride code uses today.

    Arguments as :class:`BasicBlock`'s; the shortcut is a bare 1x1 convolution.
    """

    preactivation = True

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        conv_stride: int = 1,
        spectral_pool: nn.Module | None = None,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.bn1 = norm_layer(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, conv_stride)
        self.spectral_pool = spectral_pool
        self.bn2 = norm_layer(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if conv_stride != 1 or in_ch != out_ch:
            self.shortcut = conv1x1(in_ch, out_ch, conv_stride)

    def zero_init_last(self) -> None:
        """Zero the residual branch's last convolution (no norm layer follows it in a
        pre-activation block): the block starts as its shortcut."""
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        # Projection shortcuts take the pre-activated input; identity ones the raw input.
        identity = self._resample(x if self.shortcut is None else pre)
        if self.shortcut is not None:
            identity = self.shortcut(identity)
        out = self._resample(self.conv1(pre))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


#: ``block`` option -> block class.
BLOCKS: dict[str, type[_SpectralBlock]] = {"post": BasicBlock, "pre": PreActBlock}


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------
class SpectralResNet(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, stages of 64/128/256/512 channels at ``width=64``, two blocks each).

    Args:
        strides: ``(stem, stage1, stage2, stage3, stage4)`` (:func:`validate_strides`).
        num_classes: outputs of the classifier.
        pool_layer: builds the spectral layer of a downsampling point from its stride
            (``DiffStride2d``, ``partial(SpectralPool2d, transform="hartley")``, ...);
            ``None``: strided convolutions (the strides must then be integers).
        pool_at_unit_stride: also place ``pool_layer`` after the stem and in stages 2-4
            where their stride is 1: a learned stride needs a layer to move from 1.
            Stage 1 gets a layer only where its entry is not 1.
        head_layer: builds a layer before global average pooling from ``head_stride``
            (``None``: no layer).
        block: :class:`BasicBlock` (post-activation, default) or :class:`PreActBlock`.
        in_channels: channels of the input images.
        width: channels of the stem and stage 1; stages 2-4 have 2x, 4x, 8x as many
            (64: ResNet-18; a narrower net trains faster, e.g. for tests and CPU experiments).
        zero_init_residual: start every block as its shortcut (the residual branch's last
            BatchNorm scale zeroed, torchvision's option; Goyal et al. 2017): the logits
            start small, so the first steps' gradients do too, whatever a head multiplies.
        norm_layer: builds each normalisation layer from its channels, as torchvision's
            (``None``: ``nn.BatchNorm2d``).
        variant: the name of the variant this network is (``build_model`` sets it; kept as
            ``self.variant``, ``None`` for a network built by hand).

    ``forward(x)``: ``(B, in_channels, H, W) -> (B, num_classes)``; ``forward_features(x)``
    also returns the feature map of each stage (``FEATURE_NAMES``).
    """

    FEATURE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")

    def __init__(
        self,
        strides: Sequence[float] = (1, 1, 2, 2, 2),
        num_classes: int = 10,
        pool_layer: LayerFactory | None = None,
        pool_at_unit_stride: bool = False,
        head_layer: LayerFactory | None = None,
        head_stride: float = 2.0,
        block: type[_SpectralBlock] = BasicBlock,
        in_channels: int = 3,
        width: int = DEFAULT_WIDTH,
        zero_init_residual: bool = False,
        norm_layer: NormLayer | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self._pool_layer = pool_layer
        self._pool_at_unit_stride = pool_at_unit_stride
        self.variant = variant
        self.strides = validate_strides(strides, integer=pool_layer is None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.in_channels = in_channels
        self.inplanes = width

        stem, s1, s2, s3, s4 = self.strides
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=self._conv_stride(stem), padding=1, bias=False),
            *([] if block.preactivation else [norm_layer(width), nn.ReLU(inplace=True)]),
        )
        self.stem_pool = self._spectral_layer(stem, at_unit_stride=True)
        w1, w2, w3, w4 = (width * k for k in STAGE_WIDTHS)
        self.layer1 = self._make_layer(block, w1, STAGE_BLOCKS[0], s1, pool_at_unit_stride=False)
        self.layer2 = self._make_layer(block, w2, STAGE_BLOCKS[1], s2)
        self.layer3 = self._make_layer(block, w3, STAGE_BLOCKS[2], s3)
        self.layer4 = self._make_layer(block, w4, STAGE_BLOCKS[3], s4)
        self.final_act = nn.Sequential(norm_layer(w4), nn.ReLU(inplace=True)) if block.preactivation else nn.Identity()
        self.head_pool = None if head_layer is None else head_layer(head_stride)
        self.pool = nn.AdaptiveAvgPool2d(1)  # adaptive: DiffStride's map sizes vary with the strides
        self.fc = nn.Linear(w4, num_classes)
        self._init_weights(zero_init_residual)

    def _conv_stride(self, stride: float) -> int:
        """The stride of a downsampling point's convolution: 1 where a spectral layer downsamples."""
        return int(stride) if self._pool_layer is None else 1

    def _spectral_layer(self, stride: float, at_unit_stride: bool) -> nn.Module | None:
        """The spectral layer of one downsampling point (``None``: strided convolutions, or
        stride 1 where ``at_unit_stride`` and the model's ``pool_at_unit_stride`` do not both hold)."""
        if self._pool_layer is None or (stride == 1 and not (at_unit_stride and self._pool_at_unit_stride)):
            return None
        return self._pool_layer(stride)

    def _make_layer(
        self,
        block: type[_SpectralBlock],
        planes: int,
        blocks: int,
        stride: float,
        pool_at_unit_stride: bool = True,
    ) -> nn.Sequential:
        """One stage, as torchvision's ``ResNet._make_layer``: ``blocks`` blocks of ``planes``
        channels, the first downsampling by ``stride`` (its spectral layer, or its strided
        convolutions) and projecting ``self.inplanes`` channels to ``planes``."""
        spectral_pool = self._spectral_layer(stride, at_unit_stride=pool_at_unit_stride)
        layers = [block(self.inplanes, planes, self._conv_stride(stride), spectral_pool, norm_layer=self._norm_layer)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, norm_layer=self._norm_layer))
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, _SpectralBlock):
                    module.zero_init_last()

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
        x = features["layer1"] = self.layer1(x)
        x = features["layer2"] = self.layer2(x)
        x = features["layer3"] = self.layer3(x)
        x = features["layer4"] = self.layer4(x)
        x = self.final_act(x)
        if self.head_pool is not None:
            x = self.head_pool(x)
            features["head"] = x
        logits = self.fc(torch.flatten(self.pool(x), 1))
        return logits, features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


# --------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------
def _check_choice(option: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {tuple(choices)}, got {value!r}")


def _bind(layer: type[nn.Module], transform: str, diffstride_options: dict[str, Any]) -> LayerFactory:
    """``layer`` with its options bound: DiffStride takes the DiffStride options, the
    spectral pooling and its gain a transform."""
    if layer is DiffStride2d:
        return partial(DiffStride2d, **diffstride_options)
    return partial(layer, transform=transform)


def build_model(
    variant: str,
    strides: Sequence[float] = (1, 1, 2, 2, 2),
    num_classes: int = 10,
    *,
    block: str = "post",
    head_stride: float = 2.0,
    spectral_transform: str = "fourier",
    head_transform: str = DEFAULT_HEAD_TRANSFORM,
    smoothness: float = 4.0,
    shared_stride: bool = False,
    lower_limit: float = 1.0,
    upper_limit: float | None = None,
    in_channels: int = 3,
    width: int = DEFAULT_WIDTH,
    zero_init_residual: bool = False,
    **other: Any,
) -> SpectralResNet:
    """Build a named variant: ``resnet18``, ``spectral``, ``diffstride``, ``hybrid``, ``diffstride2``.

    ``diffstride_scaled`` is the ablation ``diffstride`` + :class:`SpectralGain2d` (what the
    hybrid's head does to the classifier, without the head). Options: ``block`` (``"post"``
    or ``"pre"``), ``head_stride``; ``spectral_transform`` (``"fourier"``, the DiffStride
    paper's baseline, or ``"hartley"``) of the body's fixed spectral pooling and
    ``head_transform`` (``"hartley"``, the hybrid paper's Algorithm 1, or ``"fourier"``)
    of a spectral head, separate because the two papers define the two layers differently;
    ``smoothness``, ``shared_stride``, ``lower_limit``, ``upper_limit`` of DiffStride;
    ``width``, the channels of the first stage (64: ResNet-18); ``zero_init_residual``,
    every block starting as its shortcut (an initialisation only: the trained model is the same
    architecture).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    set_by_variant = [option for option in other if option in ("downsampling", "head", "pool_layer", "head_layer")]
    if set_by_variant:
        raise ValueError(f"option {set_by_variant[0]!r} is set by the variant name; build a SpectralResNet to choose its layers")
    if other:
        raise TypeError(f"build_model() got unexpected keyword argument(s) {', '.join(map(repr, other))}")
    _check_choice("spectral_transform", spectral_transform, TRANSFORMS)
    _check_choice("head_transform", head_transform, TRANSFORMS)
    _check_choice("block", block, tuple(BLOCKS))
    diffstride_options = dict(
        smoothness=smoothness, shared_stride=shared_stride, lower_limit=lower_limit, upper_limit=upper_limit
    )
    layers = VARIANTS[variant]
    return SpectralResNet(
        strides,
        num_classes,
        pool_layer=None if layers.pool is None else _bind(layers.pool, spectral_transform, diffstride_options),
        pool_at_unit_stride=layers.pool is DiffStride2d,  # a learned stride starts anywhere, 1 included
        head_layer=None if layers.head is None else _bind(layers.head, head_transform, diffstride_options),
        head_stride=head_stride,
        block=BLOCKS[block],
        in_channels=in_channels,
        width=width,
        zero_init_residual=zero_init_residual,
        variant=variant,
    )


def build_from_card(card: Mapping[str, Any]) -> SpectralResNet:
    """:func:`build_model` from a run card's ``variant``, ``strides``, ``num_classes``, ``options``.

    A card of a spectral-head variant that names no ``head_transform`` predates the Hartley
    default: its head was Fourier, and rebuilding it with Hartley would change what the
    trained classifier sees (4.5x vs 2x at 18x18).
    """
    options = dict(card.get("options") or {})
    variant = VARIANTS.get(card["variant"])
    if variant is not None and variant.head is SpectralPool2d:
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
