"""training.data: the real shared CIFAR-10 files, the torchvision folders, errors, the on-device loader."""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import serving.cifar_data
from training import data as D
from training.data import CIFAR10_CLASSES, CIFAR_MEAN_STD, GpuLoader, load_cifar, normalize


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    """The data directory found by the default resolution (../shared/data in CI)."""
    return D.resolve_data_dir()


@pytest.fixture(scope="module")
def partial(shared_dir) -> D.CifarData:
    return load_cifar("cifar10", shared_dir, source="partial")


@pytest.fixture(scope="module")
def jpeg(shared_dir) -> D.CifarData:
    return load_cifar("cifar10", shared_dir, source="jpeg")


# --------------------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------------------
def test_default_resolution_finds_shared_data(shared_dir, monkeypatch):
    monkeypatch.delenv("HYBRID_DATA_DIR", raising=False)
    assert (shared_dir / "cifar10_test_jpeg.npz").is_file()
    auto = load_cifar("cifar10", limit_train=10, limit_test=10)
    assert "JPEG copy" in auto.source and str(shared_dir) in auto.source  # JPEG preferred over partial


def test_partial_bit_exact_arrays(partial):
    assert (partial.n_train, partial.n_test) == (5085, 517)
    assert partial.x_train.shape == (5085, 32, 32, 3) and partial.x_train.dtype == torch.uint8
    assert partial.y_train.dtype == torch.int64 and partial.y_test.shape == (517,)
    assert partial.classes == CIFAR10_CLASSES and partial.exact
    assert "bit-exact" in partial.source and partial.describe() == {"source": partial.source, "n_train": 5085, "n_test": 517}
    for y in (partial.y_train, partial.y_test):
        assert int(y.min()) == 0 and int(y.max()) == 9


def test_jpeg_full_dataset(jpeg):
    assert (jpeg.n_train, jpeg.n_test) == (50000, 10000)
    assert jpeg.x_train.shape == (50000, 32, 32, 3) and jpeg.x_test.dtype == torch.uint8
    assert jpeg.source.startswith("CIFAR-10 (JPEG copy) from ") and not jpeg.exact
    # The official split is balanced: 5000 / 1000 images per class.
    assert torch.bincount(jpeg.y_train).tolist() == [5000] * 10
    assert torch.bincount(jpeg.y_test).tolist() == [1000] * 10
    # Channel means of the JPEG copy match the official statistics closely.
    mean = jpeg.x_train[:10000].float().mean(dim=(0, 1, 2)) / 255
    assert torch.allclose(mean, torch.tensor(CIFAR_MEAN_STD["cifar10"][0]), atol=3e-3)


def test_jpeg_matches_bit_exact_originals(jpeg, partial):
    # First test image: a 4:2:0 JPEG of the original, so close but not identical.
    diff = (jpeg.x_test[0].float() - partial.x_test[0].float()).abs().mean()
    assert 0 < diff < 13
    assert torch.equal(jpeg.y_test[:517], partial.y_test)
    # Partial train = the first 1017 images of each official batch of 10000.
    official = torch.cat([torch.arange(b * 10000, b * 10000 + 1017) for b in range(5)])
    assert torch.equal(jpeg.y_train[official], partial.y_train)
    mae = (jpeg.x_train[official[::97]].float() - partial.x_train[::97].float()).abs().mean(dim=(1, 2, 3))
    assert float(mae.max()) < 13 and float(mae.mean()) < 8


def test_limits_take_the_first_images(jpeg, shared_dir):
    small = load_cifar("cifar10", shared_dir, limit_train=300, limit_test=40)
    assert (small.n_train, small.n_test) == (300, 40)
    assert torch.equal(small.x_train, jpeg.x_train[:300]) and torch.equal(small.y_test, jpeg.y_test[:40])


def test_first_test_images_prefer_bit_exact_copies(partial, jpeg, shared_dir):
    """The parity check's and the int8 gate's reader: the first N test images, bit-exact
    partial arrays while they suffice, then the JPEG copy (the same images, same order)."""
    x, y, source = D.first_test_images(5, shared_dir)
    assert source == "partial" and x.dtype == np.uint8 and x.shape == (5, 32, 32, 3)
    assert np.array_equal(x, partial.x_test[:5].numpy()) and np.array_equal(y, partial.y_test[:5].numpy())
    n = partial.n_test + 1
    x, y, source = D.first_test_images(n, shared_dir)
    assert source == "jpeg" and np.array_equal(x, jpeg.x_test[:n].numpy()) and np.array_equal(y, jpeg.y_test[:n].numpy())
    assert np.array_equal(y[: n - 1], partial.y_test.numpy())  # the same images in the same order
    assert D.first_test_images(3, shared_dir, sources=("jpeg",))[2] == "jpeg"
    with pytest.raises(FileNotFoundError, match="holds 10001 test images"):
        D.first_test_images(jpeg.n_test + 1, shared_dir)
    with pytest.raises(ValueError, match="at least one"):
        D.first_test_images(0, shared_dir)


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limits(limit, shared_dir):
    with pytest.raises(ValueError, match="positive integer"):
        load_cifar("cifar10", shared_dir, limit_train=limit)


# --------------------------------------------------------------------------------------
# Missing data and the other sources
# --------------------------------------------------------------------------------------
def test_missing_data_names_both_ways(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar("cifar10", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "cifar-10-batches-py" in message and "--download" in message
    assert "cifar10_train_jpeg_part" in message and "HYBRID_DATA_DIR" in message and "\n" not in message


def test_cifar100_missing(shared_dir):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar("cifar100", shared_dir)


def test_env_var_and_unknown_arguments(tmp_path, monkeypatch, shared_dir):
    monkeypatch.setenv("HYBRID_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_cifar("cifar10")
    monkeypatch.setenv("HYBRID_DATA_DIR", str(shared_dir))
    assert load_cifar("cifar10", limit_train=5, limit_test=5).n_train == 5
    with pytest.raises(ValueError, match="unknown dataset"):
        load_cifar("mnist")
    with pytest.raises(ValueError, match="unknown source"):
        load_cifar("cifar10", source="web")
    with pytest.raises(FileNotFoundError, match="only has"):
        load_cifar("cifar10", shared_dir, source="torchvision")


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def _nchw_rows(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def test_torchvision_folders(tmp_path, partial, monkeypatch):
    """The official pickle layout is read through torchvision (its md5 check bypassed for the fakes)."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = partial.x_train.numpy(), partial.y_train.numpy()
    for b in range(5):
        part = slice(b * 1017, (b + 1) * 1017)
        _pickle(folder / f"data_batch_{b + 1}", {"data": _nchw_rows(x[part]), "labels": y[part].tolist()})
    _pickle(folder / "test_batch", {"data": _nchw_rows(partial.x_test.numpy()), "labels": partial.y_test.tolist()})
    _pickle(folder / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})
    loaded = load_cifar("cifar10", tmp_path)
    assert "official cifar-10-batches-py" in loaded.source and loaded.exact
    assert torch.equal(loaded.x_train, partial.x_train) and torch.equal(loaded.y_test, partial.y_test)
    # The torch-free reader of the first test images reads the same pickle, pixel for pixel.
    x_test, y_test, source = serving.cifar_data.first_test_images(7, tmp_path, sources=("torchvision",))
    assert source == "torchvision" and np.array_equal(x_test, partial.x_test.numpy()[:7])
    assert np.array_equal(y_test, partial.y_test.numpy()[:7]) and y_test.dtype == np.int64

    # CIFAR-100: fine labels and the 100 class names.
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    fine, coarse = rng.integers(0, 100, 30), rng.integers(0, 20, 30)
    for split, sl in (("train", slice(0, 20)), ("test", slice(20, 30))):
        _pickle(folder / split, {"data": _nchw_rows(images[sl]), "fine_labels": fine[sl].tolist(), "coarse_labels": coarse[sl].tolist()})
    _pickle(folder / "meta", {"fine_label_names": list(D.CIFAR100_CLASSES), "coarse_label_names": [str(i) for i in range(20)]})
    c100 = load_cifar("cifar100", tmp_path)
    assert c100.classes == D.CIFAR100_CLASSES and c100.num_classes == 100
    assert c100.y_train.tolist() == fine[:20].tolist() and torch.equal(c100.x_test, torch.from_numpy(images[20:]))
    assert "CIFAR-100 (fine labels" in c100.source


def _jpeg_npz(path: Path, images: np.ndarray, labels: np.ndarray, start: int | None) -> None:
    from PIL import Image

    blobs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=75)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    extra = {} if start is None else {"start": np.int64(start)}
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, y=labels.astype(np.uint8),
             classes=np.array(CIFAR10_CLASSES), **extra)


def test_jpeg_decode_is_cached_atomically(tmp_path, partial, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(cache))
    x, y = partial.x_train.numpy(), partial.y_train.numpy()
    _jpeg_npz(tmp_path / "cifar10_train_jpeg_part1.npz", x[20:40], y[20:40], start=20)
    _jpeg_npz(tmp_path / "cifar10_train_jpeg_part0.npz", x[:20], y[:20], start=0)
    _jpeg_npz(tmp_path / "cifar10_test_jpeg.npz", partial.x_test.numpy()[:10], partial.y_test.numpy()[:10], start=None)
    first = load_cifar("cifar10", tmp_path)
    assert (first.n_train, first.n_test) == (40, 10) and torch.equal(first.y_train, partial.y_train[:40])
    assert float((first.x_train.float() - partial.x_train[:40].float()).abs().mean()) < 13
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 3 and all(p.endswith("-v1.npy") for p in cached)  # <stem>-<sha256[:16]>-v1.npy

    # Second load: no decoding at all.
    monkeypatch.setattr(serving.cifar_data, "_decode_jpegs", lambda *a: pytest.fail("decoded again despite the cache"))
    second = load_cifar("cifar10", tmp_path)
    assert torch.equal(second.x_train, first.x_train)
    # The limit only decodes the parts it needs: part1 is not read for 20 images.
    assert load_cifar("cifar10", tmp_path, limit_train=15).n_train == 15

    # Changed content -> new key, decoded again.
    monkeypatch.undo()
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(cache))
    _jpeg_npz(tmp_path / "cifar10_test_jpeg.npz", partial.x_test.numpy()[10:15], partial.y_test.numpy()[10:15], start=None)
    assert load_cifar("cifar10", tmp_path).n_test == 5
    assert len(list(cache.glob("cifar10_test_jpeg-*.npy"))) == 2 and not list(cache.glob("*.tmp"))


def test_jpeg_parts_must_be_contiguous(tmp_path, partial, monkeypatch):
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(tmp_path / "cache"))
    x, y = partial.x_train.numpy(), partial.y_train.numpy()
    _jpeg_npz(tmp_path / "cifar10_train_jpeg_part1.npz", x[:5], y[:5], start=25000)
    _jpeg_npz(tmp_path / "cifar10_test_jpeg.npz", x[:5], y[:5], start=None)
    with pytest.raises(ValueError, match="not contiguous"):
        load_cifar("cifar10", tmp_path)


# --------------------------------------------------------------------------------------
# normalize
# --------------------------------------------------------------------------------------
def test_normalize_layouts_and_values(partial):
    x = partial.x_test[:4]  # NHWC uint8
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in CIFAR_MEAN_STD["cifar10"])
    expected = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert torch.allclose(normalize(x), expected, atol=1e-5)
    assert torch.allclose(normalize(x.permute(0, 3, 1, 2)), expected, atol=1e-5)  # NCHW
    assert torch.allclose(normalize(x.float() / 255), expected, atol=1e-5)  # float in [0, 1]
    numpy_out = normalize(x.numpy())
    assert isinstance(numpy_out, np.ndarray) and numpy_out.dtype == np.float32
    assert np.allclose(numpy_out, expected.numpy(), atol=1e-5)
    assert normalize(x[0]).shape == (3, 32, 32)
    c100 = normalize(x, "cifar100")
    assert not torch.allclose(c100, expected)
    with pytest.raises(ValueError):
        normalize(torch.zeros(2, 5, 5, 5, dtype=torch.uint8))
    with pytest.raises(ValueError):
        normalize(torch.zeros(32, 32, dtype=torch.uint8))


def test_training_and_the_onnx_runtime_normalise_bit_identically(partial):
    """One formula (``serving.cifar.standardize``): torch in training, numpy in the runtime."""
    from serving.runtime import normalize_uint8

    images = partial.x_test[:64]
    for dataset in ("cifar10", "cifar100"):
        served = normalize_uint8(images.numpy(), *CIFAR_MEAN_STD[dataset])
        trained = normalize(images, dataset).numpy()
        assert served.dtype == trained.dtype == np.float32
        assert np.array_equal(served, trained), dataset  # bit for bit, not allclose


# --------------------------------------------------------------------------------------
# GpuLoader
# --------------------------------------------------------------------------------------
def _reference_augment(image: torch.Tensor, dy: int, dx: int, flip: bool, pad: int, mode: str) -> torch.Tensor:
    """torchvision-style RandomCrop(padding) + flip of one CHW image, with plain tensor ops."""
    padded = F.pad(image[None].float(), (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")[0]
    crop = padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]
    return crop.flip(-1) if flip else crop


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_loader_augmentation_matches_reference(partial, mode):
    images, labels = partial.x_train[:64], partial.y_train[:64]
    loader = GpuLoader(images, labels, 32, train=True, seed=3, pad=4, pad_mode=mode)
    g = loader.generator(5)
    perm = torch.randperm(64, generator=g)
    dy, dx = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    flip = torch.rand(64, generator=g) < 0.5
    batches = list(loader.batches(5))
    assert len(batches) == len(loader) == 2
    x, y = batches[1]
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
    for k in range(32):
        slot = 32 + k
        i = int(perm[slot])
        ref = _reference_augment(images[i].permute(2, 0, 1), int(dy[slot]), int(dx[slot]), bool(flip[slot]), 4, mode)
        assert torch.allclose(x[k], normalize(ref / 255), atol=1e-5), k
        assert y[k] == labels[i]


def test_loader_is_deterministic_and_epoch_dependent(partial):
    def make() -> GpuLoader:
        return GpuLoader(partial.x_train[:100], partial.y_train[:100], 25, train=True, seed=1)

    a, b = list(make().batches(0)), list(make().batches(0))
    assert len(a) == 4 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    c = list(make().batches(1))
    assert not torch.equal(a[0][0], c[0][0])
    seeds = list(GpuLoader(partial.x_train[:100], partial.y_train[:100], 25, train=True, seed=2).batches(0))
    assert not torch.equal(a[0][0], seeds[0][0])


def test_loader_without_augmentation_is_a_permutation(partial):
    images, labels = partial.x_train[:50], partial.y_train[:50]
    loader = GpuLoader(images, labels, 20, train=True, seed=0, pad=0, flip=False)
    batches = list(loader.batches(0))
    assert len(batches) == 2  # drop_last
    perm = torch.randperm(50, generator=loader.generator(0))
    assert torch.allclose(batches[0][0], normalize(images[perm[:20]]))
    assert torch.equal(torch.cat([b[1] for b in batches]), labels[perm[:40]])


def test_loader_sharding_matches_distributed_sampler(partial):
    images, labels = partial.x_train[:96], partial.y_train[:96]
    whole = list(GpuLoader(images, labels, 32, train=True, seed=7).batches(2))
    shards = [list(GpuLoader(images, labels, 32, train=True, seed=7, rank=r, world_size=2).batches(2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 3
    for step, (x, y) in enumerate(whole):
        for rank in range(2):
            assert torch.equal(shards[rank][step][0], x[rank::2]) and torch.equal(shards[rank][step][1], y[rank::2])
    # Evaluation: every image exactly once over the ranks, in order, no padding.
    evals = [torch.cat([y for _, y in GpuLoader(images[:45], labels[:45], 10, train=False, rank=r, world_size=2).batches()])
             for r in range(2)]
    assert torch.equal(evals[0], labels[:45][0::2]) and torch.equal(evals[1], labels[:45][1::2])
    plain = torch.cat([x for x, _ in GpuLoader(images[:45], labels[:45], 16, train=False).batches()])
    assert torch.allclose(plain, normalize(images[:45]))


def test_loader_errors(partial):
    x, y = partial.x_train[:10], partial.y_train[:10]
    with pytest.raises(ValueError, match="exceeds"):
        GpuLoader(x, y, 32, train=True)
    with pytest.raises(ValueError, match="multiple of the world size"):
        GpuLoader(x, y, 5, train=True, world_size=2)
    with pytest.raises(ValueError, match="uint8"):
        GpuLoader(x.float(), y, 5, train=True)
    with pytest.raises(ValueError, match="pad_mode"):
        GpuLoader(x, y, 5, train=True, pad_mode="edge")


@settings(max_examples=40, deadline=None)
@given(pad=st.integers(0, 8), size=st.integers(9, 20), seed=st.integers(0, 2**16))
def test_augment_indices_stay_inside(pad, size, seed):
    g = torch.Generator().manual_seed(seed)
    dy, dx = torch.randint(0, 2 * pad + 1, (6,), generator=g), torch.randint(0, 2 * pad + 1, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    for mode in ("reflect", "zeros"):
        rows, cols, valid = D.augment_indices(dy, dx, flip, (size, size), pad, mode)
        assert rows.min() >= 0 and rows.max() < size and cols.min() >= 0 and cols.max() < size
        # Every crop keeps at least the (size - 2 * pad) x (size - 2 * pad) interior of real pixels.
        if valid is not None:
            assert bool((valid.flatten(1).sum(1) >= max(size - 2 * pad, 0) ** 2).all())
