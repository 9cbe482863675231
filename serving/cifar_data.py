"""Reading CIFAR files without torch: where the data is, the compact copies' readers, and
the first N test images (the one reader every evaluation uses).

Sources, in the order they are tried inside one data directory:

1. torchvision's standard folders ``cifar-10-batches-py/`` / ``cifar-100-python/`` (the
   official pickles; :mod:`training.data` reads them through torchvision, and
   :func:`first_test_images` reads CIFAR-10's ``test_batch`` directly);
2. the compact JPEG copy of CIFAR-10 (``cifar10_train_jpeg_part*.npz`` +
   ``cifar10_test_jpeg.npz``): all 60,000 images, decoded once with Pillow and cached as
   ``.npy`` under ``~/.cache/hybrid-spectral/`` (keyed by the file's hash);
3. the bit-exact partial CIFAR-10 arrays (``cifar10_partial_{train,test}.npz``).

The data directory is ``data_dir`` if given, else ``$HYBRID_DATA_DIR``, else the first of
``<repo>/../shared/data`` and ``./data`` that holds the requested dataset. numpy and Pillow
only: training, export and the torch-free robustness lab all read the data through here.
"""
from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .cifar import DATASETS
from .files import atomic_write, file_sha256
from .paths import SHARED_DATA_DIR

__all__ = [
    "JPEG_TEST",
    "JPEG_TRAIN_GLOB",
    "PARTIAL_FILES",
    "PRETTY_NAMES",
    "SHARED_DATA_DIR",
    "SOURCE_NAMES",
    "TORCHVISION_FOLDERS",
    "available_sources",
    "cache_dir",
    "candidate_data_dirs",
    "first_test_images",
    "load_jpeg_npz",
    "missing_message",
    "read_jpeg",
    "read_partial",
    "training_images",
    "resolve_data_dir",
]

TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
PRETTY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
JPEG_TRAIN_GLOB = "cifar10_train_jpeg_part*.npz"
JPEG_TEST = "cifar10_test_jpeg.npz"
PARTIAL_FILES = ("cifar10_partial_train.npz", "cifar10_partial_test.npz")
_CACHE_FORMAT = "v1"  # bump to invalidate every cached decode
#: How each source of :func:`first_test_images` is named wherever a figure is reported.
SOURCE_NAMES = {"torchvision": "CIFAR-10 (official files)", "jpeg": "CIFAR-10 (JPEG copy)",
                "partial": "CIFAR-10 (bit-exact partial copy)"}


# --------------------------------------------------------------------------------------
# Locating the data
# --------------------------------------------------------------------------------------
def candidate_data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories to search: ``[data_dir]``, else ``[$HYBRID_DATA_DIR]``, else the defaults."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("HYBRID_DATA_DIR")
    if env:
        return [Path(env).expanduser()]
    return [SHARED_DATA_DIR, Path.cwd() / "data"]


def available_sources(directory: Path, dataset: str) -> list[str]:
    """The sources present in ``directory`` for ``dataset``, in preference order."""
    found = []
    folder = directory / TORCHVISION_FOLDERS[dataset]
    if folder.is_dir() and any(folder.iterdir()):
        found.append("torchvision")
    if dataset == "cifar10":
        if (directory / JPEG_TEST).is_file() and list(directory.glob(JPEG_TRAIN_GLOB)):
            found.append("jpeg")
        if all((directory / name).is_file() for name in PARTIAL_FILES):
            found.append("partial")
    return found


def missing_message(dataset: str, searched: Sequence[Path]) -> str:
    where = ", ".join(str(p) for p in searched)
    folder = TORCHVISION_FOLDERS[dataset]
    compact = (
        f" or the compact files {JPEG_TRAIN_GLOB} + {JPEG_TEST} (or {PARTIAL_FILES[0]} + {PARTIAL_FILES[1]})"
        if dataset == "cifar10"
        else " (there is no compact copy of CIFAR-100)"
    )
    return (
        f"no {PRETTY_NAMES[dataset]} data found in {where}: either put torchvision's '{folder}/' folder there "
        f"(or pass --download / download=True where the internet is reachable){compact}, "
        f"and point --data-dir or HYBRID_DATA_DIR at that directory"
    )


def resolve_data_dir(data_dir: str | os.PathLike | None = None, dataset: str = "cifar10") -> Path:
    """The directory holding ``dataset``: explicit > ``$HYBRID_DATA_DIR`` > first default that has it.

    Raises ``FileNotFoundError`` (naming both ways to provide the data) when none does.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    candidates = candidate_data_dirs(data_dir)
    for directory in candidates:
        if directory.is_dir() and available_sources(directory, dataset):
            return directory.resolve()
    raise FileNotFoundError(missing_message(dataset, candidates))


# --------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where decoded JPEG arrays are cached (``$HYBRID_CACHE_DIR`` or ``~/.cache/hybrid-spectral``)."""
    return Path(os.environ.get("HYBRID_CACHE_DIR") or Path.home() / ".cache" / "hybrid-spectral")


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Concatenated JPEG files -> uint8 ``(N, H, W, 3)`` (Pillow, ~10k images/s)."""
    images = []
    for k in range(len(offsets) - 1):
        data = blob[offsets[k]:offsets[k + 1]].tobytes()
        with Image.open(io.BytesIO(data)) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return np.stack(images)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Readers see the old cache file or the complete new one."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.save would append ".npy" to a bare name
            np.save(handle, array)

    atomic_write(path, write)


def load_jpeg_npz(path: str | os.PathLike, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One JPEG ``.npz`` -> (images uint8 ``(N, 32, 32, 3)``, labels uint8 ``(N,)``).

    The decode runs once per file content: the result is cached as
    ``<cache>/<stem>-<sha256[:16]>-v1.npy``, written atomically (several processes, e.g.
    DDP ranks, may race to write it; each rename is whole).
    """
    path = Path(path)
    cache = cache_dir() if cache is None else Path(cache)
    with np.load(path, allow_pickle=False) as archive:
        labels = archive["y"]
        target = cache / f"{path.stem}-{file_sha256(path)[:16]}-{_CACHE_FORMAT}.npy"
        if target.is_file():
            try:
                images = np.load(target, allow_pickle=False)
                if images.shape == (len(labels), 32, 32, 3) and images.dtype == np.uint8:
                    return images, labels
            except (OSError, ValueError):
                pass  # a damaged cache entry: decode again and overwrite it
        images = _decode_jpegs(archive["jpeg"], archive["offsets"])
    if images.shape[0] != len(labels):
        raise ValueError(f"{path}: {images.shape[0]} images but {len(labels)} labels")
    try:
        _atomic_save_npy(target, images)
    except OSError as error:  # a read-only home must not stop training
        warnings.warn(f"could not cache decoded JPEGs at {target}: {error}", stacklevel=2)
    return images, labels


def read_jpeg(directory: Path, limit_train: int | None) -> tuple[np.ndarray, ...]:
    parts = []
    for path in directory.glob(JPEG_TRAIN_GLOB):
        with np.load(path, allow_pickle=False) as archive:
            parts.append((int(archive["start"]), len(archive["y"]), path))
    parts.sort()
    expected = 0
    for start, count, path in parts:
        if start != expected:
            raise ValueError(f"{directory}: JPEG training parts are not contiguous ({path.name} starts at {start}, expected {expected})")
        expected += count
    xs, ys, loaded = [], [], 0
    for _, count, path in parts:
        if limit_train is not None and loaded >= limit_train:
            break  # only decode the parts the limit needs
        x, y = load_jpeg_npz(path)
        xs.append(x), ys.append(y)
        loaded += count
    x_test, y_test = load_jpeg_npz(directory / JPEG_TEST)
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test


def read_partial(directory: Path) -> tuple[np.ndarray, ...]:
    arrays = []
    for name in PARTIAL_FILES:
        with np.load(directory / name, allow_pickle=False) as archive:
            arrays += [archive["x"], archive["y"]]
    return tuple(arrays)


def _read_torchvision_test(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's official ``test_batch`` pickle (what torchvision reads) -> NHWC uint8, labels."""
    with open(directory / TORCHVISION_FOLDERS["cifar10"] / "test_batch", "rb") as handle:
        batch = pickle.load(handle, encoding="latin1")
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch["labels"])


def _test_split(directory: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "torchvision":
        return _read_torchvision_test(directory)
    if source == "jpeg":
        return load_jpeg_npz(directory / JPEG_TEST)
    with np.load(directory / PARTIAL_FILES[1], allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def first_test_images(
    n: int, data_dir: str | os.PathLike | None = None, sources: Sequence[str] = ("partial", "jpeg", "torchvision")
) -> tuple[np.ndarray, np.ndarray, str]:
    """The first ``n`` CIFAR-10 test images: ``(uint8 (n, 32, 32, 3), int64 labels (n,), source)``.

    Read from the first of ``sources`` in the data directory (see :func:`resolve_data_dir`)
    that holds at least ``n`` test images; the default order puts the bit-exact partial copy
    first (what the parity checks compare on). Raises ``FileNotFoundError`` when none does,
    ``ValueError`` for ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"need at least one test image, got {n}")
    directory = resolve_data_dir(data_dir, "cifar10")
    available = available_sources(directory, "cifar10")
    for source in sources:
        if source in available:
            images, labels = _test_split(directory, source)
            if len(labels) >= n:
                return np.ascontiguousarray(images[:n]), np.asarray(labels[:n], dtype=np.int64), source
    raise FileNotFoundError(f"no CIFAR-10 source among {', '.join(sources)} in {directory} holds {n} test images")


def training_images(n: int, data_dir: str | os.PathLike | None = None, pool: int = 25_000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` CIFAR-10 training images of the JPEG copy drawn without replacement (seeded) from
    the first ``pool`` (the first part decodes alone): ``(uint8 images, int64 labels, what)``."""
    directory = resolve_data_dir(data_dir, "cifar10")
    if "jpeg" not in available_sources(directory, "cifar10"):
        raise FileNotFoundError(f"{directory}: the CIFAR-10 JPEG copy is needed (--data-dir or HYBRID_DATA_DIR)")
    x, y, _, _ = read_jpeg(directory, pool)
    x, y = x[:pool], y[:pool]
    if not 1 <= n <= len(y):
        raise ValueError(f"need 1..{len(y)} CIFAR-10 train images, got {n}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(y), n, replace=False))
    what = f"CIFAR-10 train (JPEG copy), {n} drawn from the first {len(y)} (seed {seed})"
    return x[chosen], np.asarray(y[chosen], dtype=np.int64), what
