"""CIFAR-10/100 loading and an airbench-style on-device batch loader.

Where the data is and the readers of the compact copies live in the torch-free
:mod:`serving.cifar_data` (re-exported here); this module adds torchvision's reader,
:func:`load_cifar` and the GPU loader. Sources, in the order they are tried inside one
data directory:

1. torchvision's standard folders ``cifar-10-batches-py/`` / ``cifar-100-python/`` (the
   official pickles; ``download=True`` fetches them where the internet is reachable);
2. the compact JPEG copy of CIFAR-10 (``cifar10_train_jpeg_part*.npz`` +
   ``cifar10_test_jpeg.npz``): all 60,000 images, decoded once with Pillow and cached as
   ``.npy`` under ``~/.cache/hybrid-spectral/`` (keyed by the file's hash);
3. the bit-exact partial CIFAR-10 arrays (``cifar10_partial_{train,test}.npz``).

The data directory is ``data_dir`` if given, else ``$HYBRID_DATA_DIR``, else the first of
``<repo>/../shared/data`` and ``./data`` that holds the requested dataset.

Images are returned as uint8 NHWC tensors; :func:`normalize` turns them (or NCHW
batches) into the float NCHW input the models expect with :func:`serving.cifar.standardize`,
the formula the ONNX runtime applies too, so the two can never disagree.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from serving.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_MEAN_STD, DATASETS, NUM_CLASSES, standardize
from serving.cifar_data import (
    PRETTY_NAMES,
    TORCHVISION_FOLDERS,
    available_sources,
    cache_dir,
    candidate_data_dirs,
    first_test_images,
    missing_message,
    read_jpeg,
    read_partial,
    resolve_data_dir,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR_MEAN_STD",
    "DATASETS",
    "NUM_CLASSES",
    "SOURCES",
    "CifarData",
    "GpuLoader",
    "cache_dir",
    "candidate_data_dirs",
    "first_test_images",
    "load_cifar",
    "normalize",
    "resolve_data_dir",
]

#: Accepted values of ``load_cifar(source=...)``.
SOURCES: tuple[str, ...] = ("auto", "torchvision", "jpeg", "partial")



# --------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------
def _mean_std(dataset: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[list[float], list[float]]:
    if mean is None or std is None:
        if dataset not in CIFAR_MEAN_STD:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
        default_mean, default_std = CIFAR_MEAN_STD[dataset]
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
    return [float(m) for m in mean], [float(s) for s in std]


def normalize(
    x: Tensor | np.ndarray,
    dataset: str = "cifar10",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layout: str = "auto",
) -> Tensor | np.ndarray:
    """Images -> normalised float32 NCHW model input: ``(x / 255 - mean) / std``.

    Args:
        x: ``(N, H, W, 3)`` / ``(H, W, 3)`` (NHWC) or ``(N, 3, H, W)`` / ``(3, H, W)``
            (NCHW) images; uint8 in [0, 255] or float in [0, 1]. A torch tensor or a
            numpy array (the ONNX runtime passes numpy); the result has the same kind.
        dataset: whose constants to use (``CIFAR_MEAN_STD``); ``mean``/``std`` override.
        layout: ``"auto"`` (channels are the axis of size 3: last -> NHWC, else NCHW),
            ``"nhwc"`` or ``"nchw"``.

    Returns: float32 ``(N, 3, H, W)`` (or ``(3, H, W)`` for a single image).
    """
    mean_, std_ = _mean_std(dataset, mean, std)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (N,H,W,3) or (N,3,H,W) (or one image), got {tuple(x.shape)}")
    if layout == "auto":
        layout = "nchw" if x.shape[-3] == len(mean_) else "nhwc" if x.shape[-1] == len(mean_) else "?"
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"cannot tell the channel axis of shape {tuple(x.shape)}; pass layout='nhwc' or 'nchw'")
    if isinstance(x, np.ndarray):
        out = torch.from_numpy(np.ascontiguousarray(x))
        return normalize(out, dataset, mean=mean_, std=std_, layout=layout).numpy()
    if layout == "nhwc":
        x = x.movedim(-1, -3)
    peak = 255.0 if x.dtype == torch.uint8 else 1.0
    shape = (len(mean_), 1, 1)
    m = torch.tensor(mean_, dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor(std_, dtype=torch.float32, device=x.device).view(shape)
    return standardize(x.to(torch.float32), m, s, peak)


# --------------------------------------------------------------------------------------
# The data set container
# --------------------------------------------------------------------------------------
@dataclass
class CifarData:
    """A loaded split pair. Images uint8 ``(N, 32, 32, 3)`` RGB, labels int64 ``(N,)``."""

    dataset: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    source: str
    #: True for bit-exact official pixels (torchvision folders, partial arrays).
    exact: bool = True

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        """``{"source", "n_train", "n_test"}`` as written into model cards."""
        return {"source": self.source, "n_train": self.n_train, "n_test": self.n_test}


def _read_torchvision(directory: Path, dataset: str, download: bool) -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    import torchvision  # start-up: ~4 s, only for the torchvision-folder fallback

    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    archive = directory / cls.filename
    existed = archive.exists()
    try:
        train = cls(str(directory), train=True, download=download)
        test = cls(str(directory), train=False, download=download)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"{directory / TORCHVISION_FOLDERS[dataset]}: {error}") from None
    except OSError as error:  # the download failed (no internet: urllib's URLError is an OSError)
        if not existed:
            archive.unlink(missing_ok=True)  # no partial archive left behind
        reason = getattr(error, "reason", None) or error.strerror or error
        raise FileNotFoundError(f"could not download {dataset} into {directory} ({reason}); without internet, pass "
                                f"--data-dir a folder holding the data (docs/training.md, One run)") from None
    # CIFAR100's ``targets`` are the fine labels.
    arrays = (train.data, np.asarray(train.targets), test.data, np.asarray(test.targets))
    return arrays, tuple(train.classes)


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def load_cifar(
    dataset: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    source: str = "auto",
) -> CifarData:
    """Load CIFAR-10 or CIFAR-100 (fine labels) as uint8 NHWC tensors.

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        data_dir: the directory to read (see the module docstring for the default).
        download: let torchvision download the official archive into the directory
            (``data_dir``, else ``$HYBRID_DATA_DIR``, else ``./data``) if nothing is there.
        limit_train, limit_test: keep the first N images of each split (all if larger).
        source: ``"auto"`` (torchvision > jpeg > partial) or one of them explicitly.

    Raises:
        FileNotFoundError: no usable data (the message names both ways to provide it).
        ValueError: bad arguments or inconsistent files.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    _check_limit("limit_train", limit_train)
    _check_limit("limit_test", limit_test)
    candidates = candidate_data_dirs(data_dir)
    try:
        directory = resolve_data_dir(data_dir, dataset)
    except FileNotFoundError:
        if not download or source not in ("auto", "torchvision"):
            raise
        directory = candidates[0] if data_dir or os.environ.get("HYBRID_DATA_DIR") else Path.cwd() / "data"
        directory.mkdir(parents=True, exist_ok=True)
    available = available_sources(directory, dataset) or (["torchvision"] if download else [])
    chosen = available[0] if source == "auto" else source
    if chosen not in available:
        raise FileNotFoundError(
            f"source {source!r} requested but {directory} only has {available or 'nothing'} for {dataset}; "
            + missing_message(dataset, [directory])
        )

    pretty = PRETTY_NAMES[dataset]
    classes: tuple[str, ...] = CIFAR10_CLASSES if dataset == "cifar10" else CIFAR100_CLASSES
    if chosen == "torchvision":
        arrays, classes = _read_torchvision(directory, dataset, download)
        folder = TORCHVISION_FOLDERS[dataset]
        description = f"{pretty} ({'fine labels, ' if dataset == 'cifar100' else ''}official {folder}) from {directory}"
    elif chosen == "jpeg":
        arrays = read_jpeg(directory, limit_train)
        description = f"{pretty} (JPEG copy) from {directory}"
    else:
        arrays = read_partial(directory)
        description = f"{pretty} (bit-exact partial copy) from {directory}"
    x_train, y_train, x_test, y_test = arrays
    x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    x_test, y_test = x_test[:limit_test], y_test[:limit_test]

    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y):
            raise ValueError(f"{description}: bad {split} arrays {x.shape} {x.dtype} / {np.shape(y)}")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{description}: {split} labels outside [0, {len(classes)})")
    return CifarData(
        dataset=dataset,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test.astype(np.int64)),
        classes=tuple(str(c) for c in classes),
        source=description,
        exact=chosen != "jpeg",
    )


# --------------------------------------------------------------------------------------
# On-device batches
# --------------------------------------------------------------------------------------
def _reflect(index: Tensor, size: int) -> Tensor:
    """Reflect-pad index map ('reflect' mode, edge not repeated), valid for pads < size."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def augment_indices(
    dy: Tensor, dx: Tensor, flip: Tensor, size: tuple[int, int], pad: int, mode: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Source row/column indices of random crops (+flips) of a ``pad``-padded image.

    dy, dx: ``(B,)`` crop offsets in ``[0, 2*pad]``; flip: ``(B,)`` bool.
    Returns rows ``(B, H)``, cols ``(B, W)`` into the unpadded image and, for zero padding,
    a ``(B, 1, H, W)`` validity mask (``None`` for reflect).
    """
    height, width = size
    rows = dy[:, None] - pad + torch.arange(height, device=dy.device)
    cols = dx[:, None] - pad + torch.arange(width, device=dx.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # flip after the crop
    if mode == "reflect":
        return _reflect(rows, height), _reflect(cols, width), None
    valid = ((rows >= 0) & (rows < height))[:, None, :, None] & ((cols >= 0) & (cols < width))[:, None, None, :]
    return rows.clamp(0, height - 1), cols.clamp(0, width - 1), valid


class GpuLoader:
    """Batches from a whole split kept on the device as one uint8 tensor (airbench style).

    Each epoch draws, from a CPU ``torch.Generator`` seeded by ``(seed, epoch)``, one
    permutation and (for training) one crop offset pair and flip bit per image; every batch
    is then a single gather on the device: crop with ``pad`` pixels of reflect/zero
    padding, horizontal flip, normalisation. No per-sample Python runs in the loop, and
    the batches depend only on ``(seed, epoch)``, not on the device or on resumption.

    Distributed: every rank draws the same random numbers; rank ``r`` of ``world_size``
    takes ``global_batch[r::world_size]`` of each global batch (what ``DistributedSampler``
    gives), so ``batch_size`` is the global batch size. Training drops the last partial
    batch; evaluation shards the split without padding (every image counted once).

    Args:
        images: uint8 ``(N, H, W, C)``; labels: int ``(N,)``.
        batch_size: global batch size.
        train: shuffle + augment + drop_last if True; in order, un-augmented otherwise.
        dataset / mean / std: normalisation constants (see :func:`normalize`).
        pad, pad_mode: random-crop padding (``"reflect"`` or ``"zeros"``; pad 0 = no crop).
        flip: random horizontal flips.
        channels_last: yield channels-last float batches (faster convolutions on CUDA).

    Yields ``(x, y)``: float32 ``(b, C, H, W)`` normalised, int64 ``(b,)``, on ``device``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        train: bool,
        device: str | torch.device = "cpu",
        dataset: str = "cifar10",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        pad: int = 4,
        pad_mode: str = "reflect",
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if pad_mode not in ("reflect", "zeros"):
            raise ValueError(f"pad_mode must be 'reflect' or 'zeros', got {pad_mode!r}")
        if not 0 <= pad < min(images.shape[1:3]):
            raise ValueError(f"pad must be in [0, {min(images.shape[1:3])}), got {pad}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if batch_size <= 0 or batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be a positive multiple of the world size {world_size}")
        if train and batch_size > len(images):
            raise ValueError(f"batch size {batch_size} exceeds the {len(images)} training images")
        self.device = torch.device(device)
        # NCHW once, on the device: the per-batch gather then reads contiguous planes.
        self.images = images.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.train, self.seed = batch_size, train, int(seed)
        self.mean, self.std = _mean_std(dataset, mean, std)
        self.pad, self.pad_mode, self.flip = pad, pad_mode, flip
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last

    def __len__(self) -> int:
        """Batches per epoch on this rank (equal on every rank when training)."""
        n = len(self.images)
        if self.train:
            return n // self.batch_size
        mine = len(range(self.rank, n, self.world_size))
        return -(-mine // (self.batch_size // self.world_size))

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def generator(self, epoch: int) -> torch.Generator:
        """The CPU generator of one epoch (a pure function of ``seed`` and ``epoch``)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))

    def _plan(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """This rank's image order ``(steps, b)`` and augmentation draws, on the device."""
        n = len(self.images)
        if not self.train:
            order = torch.arange(self.rank, n, self.world_size)
            return order.to(self.device), None, None, None
        g = self.generator(epoch)
        perm = torch.randperm(n, generator=g)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        steps = n // self.batch_size
        # Global batch s = perm[s*B:(s+1)*B]; this rank takes every world_size-th image of it.
        mine = perm[: steps * self.batch_size].view(steps, self.batch_size)[:, self.rank :: self.world_size]
        mine = mine.reshape(-1)
        # Augmentation draws are attached to the image's slot in the permutation.
        slot = torch.arange(steps * self.batch_size).view(steps, self.batch_size)[:, self.rank :: self.world_size].reshape(-1)
        return tuple(t.to(self.device, non_blocking=True) for t in (mine, dy[slot], dx[slot], flip[slot]))

    def batches(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate over one epoch's batches (see the class docstring)."""
        order, dy, dx, flip = self._plan(epoch)
        b = self.local_batch_size if self.train else self.batch_size // self.world_size
        size = tuple(self.images.shape[-2:])
        channels = torch.arange(self.images.shape[1], device=self.device)
        for start in range(0, len(order) if not self.train else len(self) * b, b):
            index = order[start:start + b]
            if self.train and self.pad + int(self.flip) > 0:
                rows, cols, valid = augment_indices(dy[start:start + b], dx[start:start + b], flip[start:start + b],
                                                    size, self.pad, self.pad_mode)
                # One gather: image i, channel c, row rows[i, y], column cols[i, x].
                x = self.images[index[:, None, None, None], channels[None, :, None, None],
                                rows[:, None, :, None], cols[:, None, None, :]]
                if valid is not None:
                    x = x * valid
            else:
                x = self.images[index]
            x = normalize(x, mean=self.mean, std=self.std, layout="nchw")
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[index]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.batches(0)
