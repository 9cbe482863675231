"""DiffStride2d and SpectralPool2d: the design note's semantics, fast path == torch.fft reference."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_model import DiffStride2d, SpectralPool2d, spectral

torch.set_default_dtype(torch.float32)


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --- the note's worked examples -------------------------------------------------------
def test_height_positions_match_the_note():
    assert spectral._height_positions(32) == tuple(range(16)) + tuple(range(15, -1, -1))
    assert spectral._height_positions(15) == tuple(range(1, 8)) + tuple(range(7, -1, -1))


@pytest.mark.parametrize(
    "size, stride, expected",
    [((64, 64), (2.0, 4.0), (40, 24)), ((32, 32), (2.0, 2.0), (24, 24)), ((8, 8), (2.0, 2.0), (8, 8))],
)
def test_diffstride_output_sizes_match_the_note(size, stride, expected):
    layer = DiffStride2d(stride, smoothness=4.0)
    assert layer(torch.randn(1, 2, *size)).shape[-2:] == expected
    assert layer.output_size(size) == expected


@pytest.mark.parametrize("size, stride, expected", [((16, 16), 3, (4, 5)), ((64, 64), (2, 4), (32, 16)), ((5, 5), 3, (2, 2))])
def test_fourier_pool_sizes_match_the_note(size, stride, expected):
    layer = SpectralPool2d(stride)
    assert layer(torch.randn(1, 2, *size)).shape[-2:] == expected
    assert layer.output_size(size) == expected


# --- fast path == reference (float64): outputs and both gradients ---------------------
def _diffstride_both(x, stride, smoothness):
    ref = spectral.diffstride_fft(x, stride, smoothness)
    fast = spectral.apply_separable(x, *spectral.diffstride_operators(stride, tuple(x.shape[-2:]), smoothness))
    return ref, fast


def _assert_same_function(fn_ref, fn_fast, x, params):
    """Same output, same gradient for x and every param under a random upstream gradient."""
    inputs = [x, *params]
    outs = []
    for fn in (fn_ref, fn_fast):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = fn(*leaves)
        upstream = _rand(*y.shape, seed=7)
        grads = torch.autograd.grad((y * upstream).sum(), leaves, allow_unused=True)
        # R = 0 makes the mask a hard box: the stride is then unused (zero gradient).
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
        outs.append((y.detach(), grads))
    (y_ref, g_ref), (y_fast, g_fast) = outs
    assert y_ref.shape == y_fast.shape
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(2, 40),
    width=st.integers(2, 40),
    s_h=st.floats(1.0, 6.0),
    s_w=st.floats(1.0, 6.0),
    smoothness=st.sampled_from([0.0, 1.0, 2.5, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_diffstride_fast_equals_reference(height, width, s_h, s_w, smoothness, seed):
    if min(height, width) <= smoothness:
        return
    # The projection of the design note (step 1), as the layer applies it.
    stride = torch.tensor(
        [max(s_h, height / (height - smoothness)), max(s_w, width / (width - smoothness))], dtype=torch.float64
    )
    x = _rand(2, 3, height, width, seed=seed)
    ref_fn = lambda x, s: spectral.diffstride_fft(x, s, smoothness)  # noqa: E731
    fast_fn = lambda x, s: spectral.apply_separable(x, *spectral.diffstride_operators(s, (height, width), smoothness))  # noqa: E731
    _assert_same_function(ref_fn, fast_fn, x, [stride])


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(2, 40),
    width=st.integers(2, 40),
    s_h=st.sampled_from([1, 1.5, 2, 3, 4]),
    s_w=st.sampled_from([1, 2, 2.5, 3, 5]),
    transform=st.sampled_from(["fourier", "hartley"]),
    seed=st.integers(0, 2**16),
)
def test_spectral_pool_fast_equals_reference(height, width, s_h, s_w, transform, seed):
    x = _rand(2, 3, height, width, seed=seed)
    ref = SpectralPool2d((s_h, s_w), transform, impl="fft")
    fast = SpectralPool2d((s_h, s_w), transform, impl="matmul")
    _assert_same_function(ref, fast, x, [])


@pytest.mark.parametrize("impl", ["matmul", "fft"])
@pytest.mark.parametrize(
    "size, stride", [((12, 12), (2.3, 1.7)), ((9, 14), (1.9, 3.2)), ((16, 10), (3.4, 2.6)), ((8, 9), (2.1, 1.6))]
)
def test_diffstride_gradcheck(impl, size, stride):
    x = _rand(1, 2, *size).requires_grad_(True)
    s = torch.tensor(stride, dtype=torch.float64, requires_grad=True)
    if impl == "fft":
        fn = lambda x, s: spectral.diffstride_fft(x, s, 4.0)  # noqa: E731
    else:
        fn = lambda x, s: spectral.apply_separable(x, *spectral.diffstride_operators(s, size, 4.0))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, s), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize(
    # (H, W, h, w): square maps take the height-first order, (32, 32, 32, 16) the width-first
    # one, (9, 10, 3, 4) the dense operator.
    "shape", [(32, 32, 24, 24), (32, 32, 32, 16), (16, 24, 8, 20), (9, 10, 3, 4)],
)
def test_apply_separable_is_the_sum_of_products(shape, layout):
    """Every code path of ``apply_separable`` against ``sum_t L_t @ x @ R_t`` (value and grads)."""
    height, width, h_out, w_out = shape
    x = _rand(2, 3, height, width + 1, seed=1)[..., :width]  # a non-contiguous view
    if layout == "contiguous":
        x = x.contiguous()
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    left, right = _rand(2, h_out, height, seed=2), _rand(2, width, w_out, seed=3)
    definition = lambda x, L, R: torch.einsum("thH,bcHW,tWw->bchw", L, x, R)  # noqa: E731
    _assert_same_function(definition, spectral.apply_separable, x, [left, right])
    assert spectral.apply_separable(x, left, right).is_contiguous()


@pytest.mark.parametrize("transform", ["fourier", "hartley"])
def test_spectral_pool_gradcheck(transform):
    x = _rand(1, 2, 11, 14).requires_grad_(True)
    assert torch.autograd.gradcheck(SpectralPool2d((2, 3), transform), (x,))


def test_stride_receives_gradient_only_through_the_ramp():
    layer = DiffStride2d((2.3, 2.7)).double()
    layer(_rand(2, 3, 32, 32)).square().sum().backward()
    assert layer.stride.grad is not None and torch.all(layer.stride.grad != 0)
    hard = DiffStride2d((2.3, 2.7), smoothness=0.0).double()
    hard(_rand(2, 3, 32, 32).requires_grad_(True)).square().sum().backward()
    assert hard.stride.grad is None  # a hard box (R = 0) does not depend on the stride


def test_hartley_reference_matches_the_definition():
    """DHT = Re(F) - Im(F) against the explicit cas sum, then the whole pooling by hand."""
    x = _rand(5, 6)
    n = torch.arange(5.0, dtype=torch.float64)[:, None, None, None]
    m = torch.arange(6.0, dtype=torch.float64)[None, :, None, None]
    k = torch.arange(5.0, dtype=torch.float64)[None, None, :, None]
    l = torch.arange(6.0, dtype=torch.float64)[None, None, None, :]  # noqa: E741
    angle = 2 * math.pi * (n * k / 5 + m * l / 6)
    explicit = (x[:, :, None, None] * (torch.cos(angle) + torch.sin(angle))).sum((0, 1))
    torch.testing.assert_close(spectral._dht(x), explicit)
    # Pool 5x6 -> 2x3: frequencies {-1, 0} x {-1, 0, 1}, then the DHT on the small grid;
    # both transforms orthonormal (1/sqrt(N)), as the Hartley pooling authors' code does.
    y = spectral.hartley_pool_fft(x[None, None], (2.5, 2.0))[0, 0]
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for p in range(2):
        for q in range(3):
            for fh in (-1, 0):
                for fw in (-1, 0, 1):
                    a = 2 * math.pi * (fh * p / 2 + fw * q / 3)
                    expected[p, q] += explicit[fh % 5, fw % 6] / math.sqrt(30) * (math.cos(a) + math.sin(a)) / math.sqrt(6)
    torch.testing.assert_close(y, expected)


def test_hartley_pool_is_an_orthonormal_projection():
    """Orthonormal DHTs: at stride 1 the layer is the identity (DHT twice), and GAP after the
    pooling scales GAP of the input by sqrt(HW / hw) (2 at 18x18 -> 9x9)."""
    x = _rand(2, 3, 7, 10)
    torch.testing.assert_close(SpectralPool2d(1, "hartley")(x), x)
    torch.testing.assert_close(SpectralPool2d(1, "hartley", impl="fft")(x), x)
    x = _rand(2, 3, 18, 18)
    for impl in ("matmul", "fft"):
        pooled = SpectralPool2d(2, "hartley", impl=impl)(x)
        torch.testing.assert_close(pooled.mean((-2, -1)), 2.0 * x.mean((-2, -1)))


def test_fourier_pool_at_stride_one_keeps_an_even_map():
    x = _rand(1, 1, 16, 16)
    torch.testing.assert_close(SpectralPool2d(1)(x), x)


# --- the module: projection, limits, shared stride, dtype --------------------------------
def test_projection_lifts_a_stride_near_one_and_writes_it_back():
    layer = DiffStride2d(1.0, smoothness=4.0)
    layer(torch.randn(1, 1, 32, 16))
    torch.testing.assert_close(layer.stride.detach(), torch.tensor([32 / 28, 16 / 12]))


def test_limits_clip_the_stride_used_and_the_constraint_clips_the_parameter():
    """As the official code: the forward uses clip(s, lower, upper) (no gradient strictly
    outside the limits, inclusive at them); ``constrain_`` is the Keras constraint."""
    layer = DiffStride2d((1.0, 5.0), lower_limit=1.5, upper_limit=3.0)
    layer(torch.randn(1, 1, 32, 32)).sum().backward()
    torch.testing.assert_close(layer.stride.detach(), torch.tensor([32 / 28, 5.0]))
    torch.testing.assert_close(layer.stride_pair().detach(), torch.tensor([1.5, 3.0]))
    assert torch.all(layer.stride.grad == 0)  # both strictly outside their limits
    layer.constrain_()
    torch.testing.assert_close(layer.stride.detach(), torch.tensor([1.5, 3.0]))
    layer.stride.grad = None
    layer(torch.randn(1, 1, 32, 32)).square().sum().backward()
    assert torch.all(layer.stride.grad != 0)  # at the limits: inclusive


def test_shared_stride_is_one_parameter_used_for_both_axes():
    layer = DiffStride2d(2.0, shared_stride=True)
    assert layer.stride.shape == (1,)
    layer(torch.randn(1, 1, 32, 8))  # projection: max(32/28, 8/4) = 2 for both axes
    y = layer(torch.randn(1, 1, 32, 8))
    assert torch.allclose(layer.stride_pair(), torch.tensor([2.0, 2.0]))
    ref = spectral.diffstride_fft(torch.randn(1, 1, 32, 8), torch.tensor([2.0, 2.0]), 4.0)
    assert y.shape == ref.shape


def test_bf16_autocast_keeps_the_spectral_maths_in_float32():
    x = torch.randn(2, 4, 16, 16)
    layer = DiffStride2d(2.0)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)


# --- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DiffStride2d(0.5), "stride must be finite and >= 1"),
        (lambda: DiffStride2d(float("nan")), "finite"),
        (lambda: DiffStride2d((1, 2, 3)), "one number or a pair"),
        (lambda: DiffStride2d(2, smoothness=-1), "smoothness"),
        (lambda: DiffStride2d(2, lower_limit=3, upper_limit=2), "lower_limit"),
        (lambda: DiffStride2d((2, 3), shared_stride=True), "equal initial strides"),
        (lambda: SpectralPool2d(0), ">= 1"),
        (lambda: SpectralPool2d(2, transform="wavelet"), "'fourier' or 'hartley'"),
    ],
)
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("layer", [DiffStride2d(2.0), SpectralPool2d(2)])
def test_bad_inputs_raise_value_error(layer):
    with pytest.raises(ValueError, match="4-D input"):
        layer(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(1, 1, 16, 16, dtype=torch.int64))


def test_diffstride_refuses_maps_not_larger_than_the_smoothness():
    with pytest.raises(ValueError, match=r"> smoothness R=4.0.*4x9"):
        DiffStride2d(2.0)(torch.randn(1, 1, 4, 9))


def test_bases_first_built_under_inference_mode_still_train():
    layer = SpectralPool2d((2, 3), "hartley")
    x = torch.randn(1, 2, 13, 21)  # a size no other test uses: the cache starts cold
    with torch.inference_mode():
        layer(x)
        DiffStride2d((2.7, 1.3))(x)
    layer(x.requires_grad_(True)).sum().backward()
    DiffStride2d((2.7, 1.3))(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --- the stride gradient at the clip's bounds (design note, step 4) -----------------------
def _numpy_diffstride(x: np.ndarray, stride: tuple[float, float], smoothness: float):
    """An independent DiffStride in numpy: output and its derivative in each stride.

    Writes the inclusive clip out by hand: d clip(v)/dv = 1 for 0 <= v <= 1 (as TensorFlow's
    ``clip_by_value``), and ``max(H/S, 2)`` passes its gradient at a tie (``tf.maximum``).
    """
    height, width = x.shape
    r = np.arange((height + 1) // 2)
    pos_h = np.fft.fftshift(np.concatenate([r[height % 2 :][::-1], r]))
    pos_w = np.arange(width // 2 + 1)

    def axis_mask(n, s, pos, offset):
        box, d_box = n / s, -n / s**2
        if box < 2:
            box, d_box = 2.0, 0.0
        v = (smoothness + box / 2 + offset - pos) / smoothness
        inside = (v >= 0) & (v <= 1)
        return np.clip(v, 0, 1), np.where(inside, d_box / 2 / smoothness, 0.0)

    m_h, dm_h = axis_mask(height, stride[0], pos_h, 0.0)
    m_w, dm_w = axis_mask(width, stride[1], pos_w, 1.0)
    spectrum = np.fft.rfft2(x)
    keep_h, keep_w = np.nonzero(m_h > 0)[0], np.nonzero(m_w > 0)[0]

    def crop_inverse(z):
        return np.fft.irfft2(z[keep_h][:, keep_w])

    y = crop_inverse(spectrum * m_h[:, None] * m_w)
    dy = (crop_inverse(spectrum * dm_h[:, None] * m_w), crop_inverse(spectrum * m_h[:, None] * dm_w))
    return y, dy


@pytest.mark.parametrize("impl", ["fft", "matmul"])
@pytest.mark.parametrize(
    "size, stride, smoothness",
    [
        ((32, 32), (2.0, 2.0), 4.0),  # integer stride, even map: bin 8 sits on the bound 1
        ((16, 16), (2.0, 2.0), 0.5),  # small R, stride divides the map
        ((20, 20), (1.25, 1.25), 4.0),  # the projection floor H/(H-R), exact in binary
        ((6, 12), (3.0, 2.0), 4.0),  # floor 6/(6-4) = 3 gives H/S = 2: a tie in max(H/S, 2)
        ((15, 24), (2.5, 3.0), 4.0),  # odd height; width bin 5 on the bound 1
    ],
)
def test_stride_gradient_is_inclusive_at_the_clip_bounds(impl, size, stride, smoothness):
    x = _rand(*size, seed=3)
    upstream_seed = 11
    y_np, dy_np = _numpy_diffstride(x.numpy(), stride, smoothness)
    upstream = _rand(*y_np.shape, seed=upstream_seed)
    expected = torch.tensor([float((upstream.numpy() * d).sum()) for d in dy_np], dtype=torch.float64)

    s = torch.tensor(stride, dtype=torch.float64, requires_grad=True)
    if impl == "fft":
        y = spectral.diffstride_fft(x, s, smoothness)
    else:
        y = spectral.apply_separable(x, *spectral.diffstride_operators(s, size, smoothness))
    torch.testing.assert_close(y.detach(), torch.from_numpy(y_np), rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad((y * upstream).sum(), s)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-9)
    assert torch.all(grad != 0)


def test_numpy_stride_derivative_is_the_right_sided_difference_quotient():
    """Sanity of the independent computation: with bins on the bound 1, a slightly larger
    stride moves them into the ramp, so the inclusive gradient is the right-sided slope."""
    x = _rand(32, 32, seed=3).numpy()
    y, dy = _numpy_diffstride(x, (2.0, 2.0), 4.0)
    eps = 1e-7
    y_h, _ = _numpy_diffstride(x, (2.0 + eps, 2.0), 4.0)
    y_w, _ = _numpy_diffstride(x, (2.0, 2.0 + eps), 4.0)
    np.testing.assert_allclose((y_h - y) / eps, dy[0], atol=1e-5)
    np.testing.assert_allclose((y_w - y) / eps, dy[1], atol=1e-5)
    assert np.abs(dy[0]).max() > 1e-2


def test_layer_at_its_projection_floor_still_learns():
    """A stride projected to H/(H-R) keeps a gradient (torch.clamp would zero part of it)."""
    layer = DiffStride2d(1.0, smoothness=4.0).double()
    layer(_rand(1, 2, 20, 20)).square().sum().backward()
    torch.testing.assert_close(layer.stride.detach(), torch.tensor([1.25, 1.25], dtype=torch.float64))
    x = _rand(1, 2, 20, 20)
    y_np, dy_np = zip(*[_numpy_diffstride(x[0, c].numpy(), (1.25, 1.25), 4.0) for c in range(2)])
    layer.stride.grad = None
    y = layer(x)
    y.square().sum().backward()  # d(sum y^2)/ds = sum 2 y dy/ds
    expected = [sum(float((2 * y_np[c] * dy_np[c][axis]).sum()) for c in range(2)) for axis in range(2)]
    torch.testing.assert_close(layer.stride.grad, torch.tensor(expected, dtype=torch.float64))


def test_a_layer_used_twice_trains_under_torch_compile():
    """One DiffStride layer feeds both branches of a block. Under ``torch.compile`` the first
    call's graph saves the stride parameter for backward; the second call's projection must
    not invalidate it (it used to: 'modified by an inplace operation' at the first backward)."""

    class TwoBranches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = DiffStride2d(1.0, smoothness=2.0)  # projected to its floor at each call

        def forward(self, x):
            return self.pool(x).square().mean() + self.pool(2 * x).mean()

    torch.manual_seed(0)
    eager, compiled = TwoBranches(), TwoBranches()
    x = torch.randn(2, 3, 12, 12)
    eager(x).backward()
    torch.compile(compiled)(x).backward()
    torch.testing.assert_close(compiled.pool.stride.detach(), eager.pool.stride.detach())
    torch.testing.assert_close(compiled.pool.stride.grad, eager.pool.stride.grad)
    assert torch.all(eager.pool.stride.grad != 0)
