"""Issue 21 item 2: the faster DiffStride step computes exactly what it computed before.

What changed (``hybrid_model/spectral.py``, ``hybrid_model/layers.py``): a DiffStride
forward reads the device once (its crop, both axes in one read, where it used ``nonzero``
and ``tolist`` per axis) and makes no tensor from host data once a shape has been seen
(frequency positions, the stride floor of the projection and the crop's index tensors are
cached per shape, dtype and device); the fixed Fourier pooling operators are cached like the
Hartley ones; both layers cast and relayout their input in one copy (a bf16 channels-last
activation was copied twice). Each is checked here against a frozen copy of the code before
the change (commit c90ea5d): outputs, input gradients, stride gradients and the projected
stride are bit-identical (``torch.equal``), and the host traffic of a forward is counted.

The host traffic is counted on the CPU, where nothing synchronises, by what would on a GPU:
a read of device values (``.tolist()``, ``.item()``/``float()`` i.e. ``_local_scalar_dense``,
``nonzero``, whose output size is data-dependent) and a tensor made from Python data
(``lift_fresh``: ``torch.tensor(...)`` or indexing with a list, a blocking host-to-device
copy from pageable memory).
"""
from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hybrid_model import DiffStride2d, FixedSeparable2d, SpectralPool2d, build_model, spectral
from hybrid_model.layers import _check_input, _compute_dtype


# --------------------------------------------------------------------------------------
# The code before the change (c90ea5d), frozen. The helpers it shares with today's code
# (the cached DFT bases, ``_height_operator`` and ``_width_operator``, ``apply_separable``)
# were not changed.
# --------------------------------------------------------------------------------------
def _old_inclusive_clip(value, low=None, high=None):
    if low is not None:
        value = torch.where(value < low, torch.full_like(value, low), value)
    if high is not None:
        value = torch.where(value > high, torch.full_like(value, high), value)
    return value


def _old_ramp_mask(positions, threshold, smoothness):
    if smoothness > 0:
        return _old_inclusive_clip((1.0 / smoothness) * (smoothness + threshold - positions), 0.0, 1.0)
    return (positions < threshold).to(positions.dtype)


def _old_positions(n: int, axis: str, like: torch.Tensor) -> torch.Tensor:
    values = spectral._height_positions(n) if axis == "h" else tuple(range(n // 2 + 1))
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _old_masks(stride, size, smoothness):
    height, width = size
    box_h = _old_inclusive_clip(height / stride[0], low=2.0)
    box_w = _old_inclusive_clip(width / stride[1], low=2.0)
    t_h, t_w = box_h / 2, box_w / 2 + 1
    m_h = _old_ramp_mask(_old_positions(height, "h", stride), t_h, smoothness)
    m_w = _old_ramp_mask(_old_positions(width, "w", stride), t_w, smoothness)
    return m_h, m_w, t_h, t_w


def _old_kept(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask.detach() > 0).flatten().tolist()


def old_diffstride_crop(stride, size, smoothness):
    m_h, m_w, t_h, t_w = _old_masks(stride.detach(), size, smoothness)
    kept_h, kept_w = len(_old_kept(m_h)), len(_old_kept(m_w))
    return (
        spectral.AxisCrop(size[0], float(t_h), float(t_h) + smoothness, kept_h, kept_h),
        spectral.AxisCrop(size[1], float(t_w), float(t_w) + smoothness, kept_w, 2 * (kept_w - 1)),
    )


def old_diffstride_fft(x, stride, smoothness):
    m_h, m_w, _, _ = _old_masks(stride, x.shape[-2:], smoothness)
    spectrum = torch.fft.rfft2(x) * m_w * m_h[:, None]
    spectrum = spectrum[..., _old_kept(m_h), :][..., _old_kept(m_w)]
    return torch.fft.irfft2(spectrum)


def old_diffstride_operators(stride, size, smoothness):
    m_h, m_w, _, _ = _old_masks(stride, size, smoothness)
    keep_h, keep_w = _old_kept(m_h), _old_kept(m_w)
    left = spectral._height_operator(size[0], keep_h, m_h[keep_h], len(keep_h))
    right = spectral._width_operator(size[1], len(keep_w), m_w[: len(keep_w)], 2 * (len(keep_w) - 1))
    return spectral._real_part_terms(left, right)


def old_fourier_pool_operators(size, stride, device, dtype):
    h_out, w_out = spectral.spectral_pool_size(size, stride)
    ones_h = torch.ones(h_out, dtype=dtype, device=device)
    ones_w = torch.ones(w_out // 2 + 1, dtype=dtype, device=device)
    left = spectral._height_operator(size[0], spectral._fourier_height_bins(size[0], h_out), ones_h, h_out)
    right = spectral._width_operator(size[1], w_out // 2 + 1, ones_w, w_out)
    return spectral._real_part_terms(left, right)


class OldDiffStride2d(DiffStride2d):
    """``DiffStride2d`` with the forward (and projection) of c90ea5d."""

    @torch.no_grad()
    def project_(self, size):
        self._check_size(size)
        r = self.smoothness
        floor = torch.tensor([size[0] / (size[0] - r), size[1] / (size[1] - r)], device=self.stride.device)
        if self.shared_stride:
            floor = floor.max().reshape(1)
        self.stride.data.copy_(torch.maximum(self.stride.data, floor))

    def stride_pair(self, dtype=torch.float32):
        stride = _old_inclusive_clip(self.stride.to(dtype), self.lower_limit, self.upper_limit)
        return stride.expand(2) if self.shared_stride else stride

    def forward(self, x):
        _check_input(x, "DiffStride2d")
        size = (x.shape[-2], x.shape[-1])
        self.project_(size)
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(dtype)
            if self.impl == "fft":
                return old_diffstride_fft(x, self.stride_pair(dtype), self.smoothness)
            return spectral.apply_separable(x, *old_diffstride_operators(self.stride_pair(dtype), size, self.smoothness))


class OldSpectralPool2d(SpectralPool2d):
    """``SpectralPool2d`` with the forward of c90ea5d (Fourier operators rebuilt every call)."""

    def forward(self, x):
        _check_input(x, "SpectralPool2d")
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(dtype)
            if self.impl == "fft":
                pool = spectral.fourier_pool_fft if self.transform == "fourier" else spectral.hartley_pool_fft
                return pool(x, self.stride)
            size = (x.shape[-2], x.shape[-1])
            if self.transform == "fourier":
                operators = old_fourier_pool_operators(size, self.stride, x.device, dtype)
            else:
                operators = spectral.hartley_pool_operators(size, self.stride, x.device, dtype)
            return spectral.apply_separable(x, *operators)


_OLD_CLASSES = {DiffStride2d: OldDiffStride2d, SpectralPool2d: OldSpectralPool2d}


def as_old(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose spectral layers run the old code (same state)."""
    old = copy.deepcopy(module)
    for layer in old.modules():
        if type(layer) in _OLD_CLASSES:
            layer.__class__ = _OLD_CLASSES[type(layer)]
    return old


# --------------------------------------------------------------------------------------
# Counting host traffic
# --------------------------------------------------------------------------------------
_READS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten.masked_select}
_FROM_HOST = {torch.ops.aten.lift_fresh, torch.ops.aten.lift_fresh_copy}


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in _READS:
            self.counts[f"read {func.overloadpacket.__name__}"] += 1
        elif func.overloadpacket in _FROM_HOST:
            self.counts["tensor from host data"] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def host_traffic() -> Iterator[Counter]:
    """Count, inside the block, what would synchronise a GPU stream (see the module docstring).

    ``Tensor.tolist``/``cpu``/``numpy`` never reach the dispatcher for a CPU tensor, so they
    are wrapped for the duration.
    """
    counts: Counter = Counter()
    names = ("tolist", "cpu", "numpy")
    own = {name: vars(torch.Tensor).get(name) for name in names}
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def counted(name, original):
        def read(self, *args, **kwargs):
            counts[f"read Tensor.{name}"] += 1
            return original(self, *args, **kwargs)

        return read

    try:
        for name in names:
            setattr(torch.Tensor, name, counted(name, originals[name]))
        with _DispatchCounter(counts):
            yield counts
    finally:
        for name in names:
            if own[name] is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own[name])


def _forward_traffic(layer: torch.nn.Module, x: torch.Tensor) -> tuple[Counter, Counter]:
    """Host traffic of one forward and its backward, after a warm-up call (caches filled)."""
    layer(x).sum().backward()
    x = x.detach().requires_grad_(True)
    with host_traffic() as forward:
        y = layer(x)
    with host_traffic() as backward:
        y.sum().backward()
    return forward, backward


LAYERS = {
    "matmul": lambda: DiffStride2d((2.3, 1.7)),
    "fft": lambda: DiffStride2d((2.3, 1.7), impl="fft"),
    "shared": lambda: DiffStride2d(1.0, shared_stride=True),
    "limits": lambda: DiffStride2d((1.0, 5.0), lower_limit=1.5, upper_limit=3.0),
}


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("size", [(32, 32), (8, 8), (15, 24)])
def test_a_diffstride_forward_reads_the_device_once(kind, size):
    forward, backward = _forward_traffic(LAYERS[kind](), torch.randn(2, 3, *size, requires_grad=True))
    assert forward == Counter({"read Tensor.tolist": 1})  # the crop: one read, no host-to-device copy
    assert not backward


def test_the_code_before_read_and_copied_eight_times_per_forward():
    """The figure the change is measured against: per forward, a host-to-device copy of the
    stride floor and of each axis's positions, ``nonzero`` and ``tolist`` per axis, and the
    height crop's index list (4 copies, 4 synchronising reads)."""
    forward, _ = _forward_traffic(as_old(DiffStride2d((2.3, 1.7))), torch.randn(2, 3, 32, 32, requires_grad=True))
    assert forward == Counter({"tensor from host data": 4, "read nonzero": 2, "read Tensor.tolist": 2})


@pytest.mark.parametrize("transform", ["fourier", "hartley"])
def test_a_spectral_pool_forward_has_no_host_traffic(transform):
    forward, backward = _forward_traffic(SpectralPool2d(2, transform), torch.randn(2, 3, 16, 16, requires_grad=True))
    assert not forward and not backward


@pytest.mark.parametrize("variant, layers", [("diffstride", 7), ("hybrid", 7), ("diffstride2", 8), ("spectral", 0)])
def test_a_resnet_training_step_reads_the_device_once_per_diffstride_call(variant, layers):
    """Stem + three projection blocks (each calls its layer twice, main branch and shortcut)."""
    torch.manual_seed(0)
    model = build_model(variant, (1, 1, 2, 2, 2), 10, width=4).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    F.cross_entropy(model(x), y).backward()
    with host_traffic() as counts:
        F.cross_entropy(model(x), y).backward()
    assert counts == (Counter({"read Tensor.tolist": layers}) if layers else Counter())


# --------------------------------------------------------------------------------------
# Equality with the code before: outputs, input gradients, stride gradients, bit for bit
# --------------------------------------------------------------------------------------
def _rand(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _random_configs(count: int, seed: int = 0) -> list[tuple]:
    """(size, stride, smoothness) with strides anywhere in [1, 6], maps 5..40 (> smoothness)."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        size = (rng.randint(5, 40), rng.randint(5, 40))
        smoothness = rng.choice([0.0, 1.0, 2.5, 4.0])
        if min(size) <= smoothness:
            continue
        floor = [n / (n - smoothness) for n in size]
        stride = tuple(max(rng.uniform(1.0, 6.0), f) for f in floor)
        configs.append((size, stride, smoothness))
    # Integer strides on even maps: a pass-band bin on the clip bound; and the projection floor.
    return configs + [((32, 32), (2.0, 2.0), 4.0), ((20, 20), (1.25, 1.25), 4.0), ((6, 12), (3.0, 2.0), 4.0)]


def _output_and_grads(fn, x: torch.Tensor, stride: torch.Tensor, upstream_seed: int = 7):
    x, stride = x.detach().clone().requires_grad_(True), stride.detach().clone().requires_grad_(True)
    y = fn(x, stride)
    upstream = _rand(*y.shape, seed=upstream_seed, dtype=y.dtype)
    grads = torch.autograd.grad((y * upstream).sum(), (x, stride), allow_unused=True)
    return y.detach(), grads


def _assert_identical(new, old) -> None:
    (y_new, g_new), (y_old, g_old) = new, old
    assert torch.equal(y_new, y_old)
    for a, b in zip(g_new, g_old):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", _random_configs(40), ids=str)
def test_diffstride_functions_equal_the_code_before(config, dtype):
    size, stride, smoothness = config
    x, s = _rand(2, 3, *size, seed=sum(size), dtype=dtype), torch.tensor(stride, dtype=dtype)
    new_ops, old_ops = spectral.diffstride_operators(s, size, smoothness), old_diffstride_operators(s, size, smoothness)
    assert all(torch.equal(a, b) for a, b in zip(new_ops, old_ops))
    _assert_identical(
        _output_and_grads(lambda x, s: spectral.apply_separable(x, *spectral.diffstride_operators(s, size, smoothness)), x, s),
        _output_and_grads(lambda x, s: spectral.apply_separable(x, *old_diffstride_operators(s, size, smoothness)), x, s),
    )
    _assert_identical(
        _output_and_grads(lambda x, s: spectral.diffstride_fft(x, s, smoothness), x, s),
        _output_and_grads(lambda x, s: old_diffstride_fft(x, s, smoothness), x, s),
    )
    assert spectral.diffstride_crop(s.double(), size, smoothness) == old_diffstride_crop(s.double(), size, smoothness)


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (2.0, None), (None, 1.0), (1.5, 3.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inclusive_clip_equals_the_code_before(dtype, bounds):
    """Values and gradient, with values on, inside and outside the bounds."""
    value, one = torch.tensor([-1.0, 0.0, 0.25, 1.0, 1.5, 2.0, 3.0], dtype=dtype), torch.tensor(1.0, dtype=dtype)
    _assert_identical(
        _output_and_grads(lambda x, s: spectral.inclusive_clip(x * s, *bounds), value, one),
        _output_and_grads(lambda x, s: _old_inclusive_clip(x * s, *bounds), value, one),
    )


def _layer_run(layer: torch.nn.Module, x: torch.Tensor, autocast: bool):
    """Two calls (as a residual block makes: main branch and shortcut), then backward."""
    x = x.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x) * 0.5 + layer(x.square())
    y.backward(_rand(*y.shape, seed=11, dtype=y.dtype))
    stride = getattr(layer, "stride", None)
    grads = [x.grad] + ([stride.grad, stride.detach()] if isinstance(stride, torch.Tensor) else [])
    return y.detach(), grads


LAYOUTS = ["contiguous", "channels_last", "sliced", "bf16_channels_last"]


def _input(shape: tuple[int, ...], layout: str, dtype: torch.dtype) -> torch.Tensor:
    x = _rand(*shape[:-1], shape[-1] + 1, seed=sum(shape), dtype=dtype)[..., :-1]
    if layout == "contiguous":
        return x.contiguous()
    if layout in ("channels_last", "bf16_channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
        return x.bfloat16() if layout == "bf16_channels_last" else x
    return x  # a non-contiguous view


DIFFSTRIDE_LAYERS = {
    "matmul": lambda: DiffStride2d((2.3, 1.7)),
    "fft": lambda: DiffStride2d((2.3, 1.7), impl="fft"),
    "floor": lambda: DiffStride2d(1.0),  # projected to H/(H-R), W/(W-R)
    "shared": lambda: DiffStride2d(1.0, shared_stride=True),
    "limits": lambda: DiffStride2d((1.0, 5.0), lower_limit=1.5, upper_limit=3.0),
    "hard_box": lambda: DiffStride2d((2.0, 3.0), smoothness=0.0),
    "R2.5": lambda: DiffStride2d((3.4, 2.6), smoothness=2.5),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 4, 16, 24), (3, 2, 8, 8), (2, 3, 15, 9)])
@pytest.mark.parametrize("kind", DIFFSTRIDE_LAYERS)
def test_diffstride_layer_equals_the_code_before(kind, shape, layout):
    layer = DIFFSTRIDE_LAYERS[kind]()
    x = _input(shape, layout, torch.float32)
    autocast = layout.startswith("bf16")
    _assert_identical(_layer_run(layer, x, autocast), _layer_run(as_old(layer), x, autocast))


def test_diffstride_layer_in_float64_equals_the_code_before():
    layer = DiffStride2d((2.3, 1.7)).double()
    x = _input((2, 3, 20, 28), "channels_last", torch.float64)
    _assert_identical(_layer_run(layer, x, False), _layer_run(as_old(layer), x, False))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride", [2, (3, 1.5)])
@pytest.mark.parametrize("impl", ["matmul", "fft"])
@pytest.mark.parametrize("transform", ["fourier", "hartley"])
def test_spectral_pool_equals_the_code_before(transform, impl, stride, layout):
    layer = SpectralPool2d(stride, transform, impl=impl)
    for shape in [(2, 3, 16, 16), (2, 3, 4, 4), (1, 2, 11, 14)]:
        x = _input(shape, layout, torch.float32)
        autocast = layout.startswith("bf16")
        _assert_identical(_layer_run(layer, x, autocast), _layer_run(as_old(layer), x, autocast))


def test_cached_fourier_operators_do_not_track_gradients_and_frozen_copies_do_not_alias_them():
    left, right = spectral.fourier_pool_operators((16, 16), (2.0, 2.0), torch.device("cpu"), torch.float32)
    assert not left.requires_grad and left.grad_fn is None and right.grad_fn is None
    assert spectral.fourier_pool_operators([16, 16], [2, 2], "cpu", torch.float32)[0] is left  # one cache entry
    frozen = FixedSeparable2d(left, right, (16, 16), "spectral")
    assert frozen.left.data_ptr() != left.data_ptr() and torch.equal(frozen.left, left)


@pytest.mark.parametrize("variant", ["diffstride", "hybrid", "diffstride2"])
@pytest.mark.parametrize("bf16_channels_last", [False, True])
def test_resnet_step_equals_the_code_before(variant, bf16_channels_last):
    """Loss and every parameter's gradient (strides included) of a small ResNet-18 step."""
    torch.manual_seed(0)
    model = build_model(variant, (1, 1, 2, 2, 2), 10, width=4).train()
    x, y = _rand(4, 3, 32, 32, seed=5), torch.tensor([0, 3, 5, 9])
    if bf16_channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step(net):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_channels_last):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        return loss.detach(), {name: p.grad for name, p in net.named_parameters()}

    old = as_old(model)
    (loss_new, grads_new), (loss_old, grads_old) = step(model), step(old)
    assert torch.equal(loss_new, loss_old)
    assert grads_new.keys() == grads_old.keys()
    for name in grads_new:
        assert torch.equal(grads_new[name], grads_old[name]), name
