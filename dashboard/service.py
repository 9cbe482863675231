"""The dashboard's model-side logic: loading, validation, caching, analysis. It makes no Gradio
calls (its :class:`UserError` becomes a ``gr.Error`` in ``handlers``), but importing it imports
Gradio: the ``dashboard`` package and ``figures`` (Gradio's ``PlotData``) do.

Everything the UI shows for one (image, model) pair comes from one compact :class:`Analysis`
(top-5, the 32x32 input as the model saw it, map shapes, latency), computed once and kept in
a byte-bounded LRU cache keyed by the image's content hash and the model name, so the
Classify, Spectra and Compare views of the same upload share one forward pass.

Memory is bounded in bytes, not entries (``cache_mb``, default :data:`DEFAULT_CACHE_MB`):
3/4 of the budget holds the compact results (analyses, prepared 32x32 pixels, spectra,
figure JSON), 1/4 the full feature maps of recent forward passes (0.7-2.4 MB each), which
only the Spectra tab needs; an evicted one is recomputed by running the model again on the
cached 32x32 pixels. Decoded uploads are never cached (a 40-megapixel image is 120 MB).

Uploads refused for their content (empty, too large, not an image) are deleted at once
when they live in the server's upload folder (``upload_dir``), so a refused request
leaves nothing behind.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustness import probe
from robustness.report import ResultsError, read_results
from robustness.transforms import TransformError
from serving import STAGES, log_spectrum  # torch-free: this process never imports torch
from serving.cards import RunCard
from serving.images import ImageError
from serving.registry import ModelEntry, ModelRegistry
from serving.runtime import OnnxModel

from .figures import CropBox, SpectrumPanel

__all__ = ["UserError", "Analysis", "DashboardService", "ByteLruCache", "approx_bytes",
           "DATA_URL_FOLDER", "DEFAULT_CACHE_MB", "MAX_UPLOAD_BYTES", "too_large_message"]

log = logging.getLogger("dashboard")

#: The map each stage's downsampling layer reads (the previous stage's output).
PREVIOUS_MAP = {"stem": "input", "layer1": "stem", "layer2": "layer1", "layer3": "layer2", "layer4": "layer3",
                "head": "layer4"}
#: The largest upload the app reads (the web server's upload route refuses larger ones too).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Default memory budget of all the dashboard's caches together (MB).
DEFAULT_CACHE_MB = 128
_FEATURES_SHARE = 0.25  # of the budget, for full feature maps (see the module docstring)


class UserError(Exception):
    """A problem the user can act on; its message is shown as is."""


def approx_bytes(value: Any) -> int:
    """Approximate memory held by a cached value: array buffers, strings and containers
    counted recursively (a figure's JSON string dominates its size). Exact enough for a
    budget; objects can report their own size with a ``cache_bytes()`` method."""
    if hasattr(value, "cache_bytes"):
        return int(value.cache_bytes())
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 112
    if isinstance(value, (str, bytes, bytearray)):
        return len(value) + 49
    if isinstance(value, dict):
        return 64 + sum(approx_bytes(k) + approx_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return 56 + sum(approx_bytes(v) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return 64 + approx_bytes(vars(value))
    return sys.getsizeof(value)


class ByteLruCache:
    """A thread-safe LRU mapping bounded by the total size of its values in bytes.

    A value larger than the whole budget is returned but not kept.
    """

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = approx_bytes) -> None:
        self.max_bytes = int(max_bytes)
        self._sizeof = sizeof
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key][0]
        value = compute()  # outside the lock: concurrent misses may compute twice, harmlessly
        self.put(key, value)
        return value

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        size = self._sizeof(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._data.popitem(last=False)
                self._bytes -= evicted

    @property
    def nbytes(self) -> int:
        """Bytes held now (as counted by ``sizeof``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class Summary:
    """What is kept of one forward pass: the top-k, the probabilities, the ``(32, 32, 3)``
    uint8 image as the model saw it, and timings (ms). The feature maps are not kept here."""

    top_k: list[tuple[str, float]]
    probs: np.ndarray
    model_input: np.ndarray
    latency_ms: float
    preprocess_ms: float = 0.0

    def cache_bytes(self) -> int:
        return 400 + 80 * len(self.top_k) + self.probs.nbytes + self.model_input.nbytes


@dataclass(frozen=True)
class Analysis:
    """One image through one model (compact: about 4 KB)."""

    model_name: str
    digest: str
    summary: Summary  # what is kept of the forward pass (not the serving Prediction)
    shapes: dict[str, tuple[int, ...]]

    @property
    def topk(self) -> list[tuple[str, float]]:
        return [(str(c), float(p)) for c, p in self.summary.top_k]

    def map_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{"input": (3, H, W), stage: (C, h, w), ...}``."""
        return dict(self.shapes)

    def cache_bytes(self) -> int:
        return 300 + len(self.model_name) + len(self.digest) + self.summary.cache_bytes() + 120 * len(self.shapes)


def too_large_message(size: int | None) -> str:
    """The one sentence for an upload over :data:`MAX_UPLOAD_BYTES` (``size`` in bytes, if known),
    the same from the app and from the upload route (``dashboard.gradio_fixes.UploadLimitMessage``)."""
    limit = f"the limit is {MAX_UPLOAD_BYTES // 2**20} MB."
    if size is None:
        return f"The uploaded file is over the limit; {limit}"
    return f"The uploaded file is {size / 2**20:.1f} MB; {limit}"


#: Where ``dashboard.components.RawImage`` stores pasted (data URL) images, under content-hash
#: names, inside the upload folder (``app.py`` sweeps it).
DATA_URL_FOLDER = "dashboard_uploads"


def _upload_label(file: Path, noun: str = "upload") -> str:
    """The subject of a sentence about an upload: its name, or for a pasted image (whose file
    name is a hash the caller never saw) what it was."""
    if file.parent.name == DATA_URL_FOLDER and file.suffix == ".img":
        return "The pasted image (data URL)"
    return f"The {noun} '{file.name}'"


def _read_upload(path: str | Path | None) -> bytes:
    if path is None or (isinstance(path, str) and not path.strip()):
        raise UserError("No image was provided: upload an image (or pick one of the examples) first.")
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError:
        raise UserError(f"{_upload_label(file, 'uploaded file')} is no longer available; please upload it again.") from None
    if size == 0:
        raise UserError(f"{_upload_label(file, 'uploaded file')} is empty (0 bytes); please upload an image file.")
    if size > MAX_UPLOAD_BYTES:
        raise UserError(too_large_message(size))
    return file.read_bytes()


class DashboardService:
    """Models, cards and cached analyses for the dashboard.

    Args:
        models_dir: folder of exported models (``serving.registry.ModelRegistry``).
        cache_mb: memory budget of all caches together, in MB (see the module docstring).
        upload_dir: the web server's upload folder; uploads inside it that are refused for
            their content are deleted. ``None``: never delete anything.
    """

    def __init__(self, models_dir: str | Path, cache_mb: float = DEFAULT_CACHE_MB,
                 upload_dir: str | Path | None = None) -> None:
        if cache_mb <= 0:
            raise ValueError(f"cache_mb must be positive, got {cache_mb}")
        self.models_dir = Path(models_dir)
        self.upload_dir = Path(upload_dir).resolve() if upload_dir is not None else None
        self.registry = None
        self.load_error: str | None = None
        try:
            self.registry = ModelRegistry(self.models_dir)
        except Exception as exc:  # the app must still start and say why
            self.load_error = f"{type(exc).__name__}: {exc}"
        budget = int(cache_mb * 2**20)
        self._features = ByteLruCache(int(budget * _FEATURES_SHARE))
        self._results = ByteLruCache(budget - self._features.max_bytes)

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the caches now; never more than ``cache_mb`` MB."""
        return self._results.nbytes + self._features.nbytes

    @property
    def cache_budget(self) -> int:
        return self._results.max_bytes + self._features.max_bytes

    # ---------------------------------------------------------------- models and cards
    def names(self) -> list[str]:
        return list(self.registry.names()) if self.registry is not None else []

    def entries(self) -> list[Any]:
        return list(self.registry.entries) if self.registry is not None else []

    def skipped(self) -> list[tuple[str, str]]:
        if self.registry is None:
            return [(str(self.models_dir), self.load_error or "could not be read")]
        return [(str(f), str(r)) for f, r in self.registry.skipped]

    def default_name(self) -> str | None:
        if self.registry is None or not self.names():
            return None
        return self.registry.default_name()

    def no_models_message(self) -> str:
        lines = [f"No valid model was found in '{self.models_dir}'."]
        for file, reason in self.skipped():
            lines.append(f"Skipped {Path(file).name}: {reason}.")
        if self.models_dir.exists() and not self.models_dir.is_dir():
            lines.append("It is a file, not a folder; start the app with --models-dir pointing at a folder of exported models.")
        elif not self.models_dir.is_dir():
            lines.append("The folder does not exist; start the app with --models-dir pointing at exported models.")
        elif not self.skipped():
            lines.append("The folder holds no exported model; export one with `python -m exports.export`.")
        return " ".join(lines)

    def preload(self, stop: threading.Event | None = None) -> None:
        """Create every model's onnxruntime session now (the registry loads lazily), so the
        first request of each model does not pay for it. Failures surface on use. ``stop``:
        checked between models (a server shutting down does not wait for all of them)."""
        for name in self.names():
            if stop is not None and stop.is_set():
                return
            try:
                self.registry.get(name)
            except Exception:  # noqa: BLE001 - reported when the model is requested
                pass

    def model(self, name: str | None) -> OnnxModel:
        """The named model (the best bundled one for ``None``/empty), or a clear :class:`UserError`."""
        if not self.names():
            raise UserError(self.no_models_message())
        name = name or self.default_name()
        if name not in self.names():
            raise UserError(f"Unknown model '{name}'; the available models are {', '.join(self.names())}.")
        try:
            return self.registry.get(name)
        except Exception as exc:
            raise UserError(f"Model '{name}' could not be loaded: {exc}") from None

    def card(self, name: str | None) -> RunCard:
        """The model's card (a copy; from the registry's validation, no session is created):
        what ``training.report``'s tables and figures read, as from card files."""
        return copy.deepcopy(self.entry(name).card)

    def entry(self, name: str | None) -> ModelEntry:
        if not self.names():
            raise UserError(self.no_models_message())
        name = name or self.default_name()
        for entry in self.entries():
            if entry.name == name:
                return entry
        raise UserError(f"Unknown model '{name}'; the available models are {', '.join(self.names())}.")

    # ---------------------------------------------------------------- uploads
    def discard_upload(self, path: str | Path | None) -> bool:
        """Delete ``path`` if it lies inside ``upload_dir``."""
        if self.upload_dir is None or path is None or not str(path).strip():
            return False
        try:
            file = Path(path).resolve()
            if self.upload_dir not in file.parents or not file.is_file():
                return False
            file.unlink(missing_ok=True)
        except OSError:
            return False
        # Its (now maybe empty) folder stays: another request may be writing into it.
        log.info("deleted refused upload %s", file.name)
        return True

    def pixels(self, path: str | Path | None, model: Any) -> tuple[str, np.ndarray]:
        """``(content digest, (H, W, 3) uint8 image as ``model`` sees it)`` of an upload,
        validated; a refused upload is discarded (see :meth:`discard_upload`)."""
        try:
            data = _read_upload(path)
        except UserError:
            self.discard_upload(path)
            raise
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()

        def prepare() -> np.ndarray:
            try:
                return model.prepare(data)
            except ImageError as exc:
                raise UserError(_image_message(Path(path), exc)) from None

        try:
            seen = self._results.get_or_compute(("pixels", digest, tuple(model.input_size)), prepare)
        except UserError:
            self.discard_upload(path)
            raise
        return digest, seen

    # ---------------------------------------------------------------- analyses
    def analyse(self, path: str | Path | None, model_name: str | None) -> Analysis:
        model = self.model(model_name)
        digest, seen = self.pixels(path, model)

        def run() -> Analysis:
            try:
                prediction = model.predict_pixels(seen)
            except Exception as exc:
                raise UserError(f"Model '{model.name}' failed on this image: {exc}") from None
            self._features.put((digest, model.name), prediction.features)
            shapes = {"input": (3, *seen.shape[:2])}
            shapes.update({s: tuple(int(d) for d in f.shape) for s, f in prediction.features.items()})
            summary = Summary(prediction.top_k, prediction.probs, seen, prediction.latency_ms)
            return Analysis(model.name, digest, summary, shapes)

        return self._results.get_or_compute(("analysis", digest, model.name), run)

    def feature_maps(self, analysis: Analysis) -> dict[str, np.ndarray]:
        """``{stage: (C, h, w) float32}`` of an analysis: from the cache of recent forward
        passes, else by running the model again on the cached 32x32 input."""

        def rerun() -> dict[str, np.ndarray]:
            return self.model(analysis.model_name).predict_pixels(analysis.summary.model_input).features

        return self._features.get_or_compute((analysis.digest, analysis.model_name), rerun)

    def spectra(self, analysis: Analysis) -> dict[str, np.ndarray]:
        """Centred log-magnitude spectrum of the input image and of every stage's output."""

        def compute() -> dict[str, np.ndarray]:
            image = analysis.summary.model_input.astype(np.float32).transpose(2, 0, 1) / 255.0
            spectra = {"input": log_spectrum(image)}
            for stage, fmap in self.feature_maps(analysis).items():
                spectra[stage] = log_spectrum(fmap)
            return spectra

        return self._results.get_or_compute(("spectra", analysis.digest, analysis.model_name), compute)

    def cached_figure(self, key: Hashable, build: Callable[[], Any]) -> Any:
        return self._results.get_or_compute(("figure", key), build)

    # ---------------------------------------------------------------- robustness
    def robustness(self) -> dict | None:
        """The folder's ``robustness.json`` (current models only), re-read when the file changes;
        ``None`` when absent. An unreadable file is reported once in the log and treated as absent."""
        path = self.models_dir / "robustness.json"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None

        def read() -> dict | None:
            try:
                return read_results(self.models_dir)
            except ResultsError as exc:
                log.warning("%s", exc)
                return None

        return self._results.get_or_compute(("robustness", stamp), read)

    def probe(self, path: str | Path | None, names: list[str], family: str) -> tuple[list[str], np.ndarray, dict]:
        """The upload transformed step by step (:func:`robustness.probe.steps`) and, per model,
        each step's top class, its confidence and the probability of the untouched image's class.

        Returns ``(step labels, the steps side by side as one image, {model: [step dicts]})``.
        """
        if family not in probe.FAMILIES:
            raise UserError(f"Unknown transform '{family}'; choose one of {', '.join(probe.FAMILIES)}.")
        models = [self.model(name) for name in names]
        digest, seen = self.pixels(path, models[0])

        def run_steps() -> tuple[list[str], list[np.ndarray]]:
            try:
                pairs = probe.steps(seen, family)
            except TransformError as exc:
                raise UserError(str(exc)) from None
            return [label for label, _ in pairs], [image for _, image in pairs]

        labels, images = self._results.get_or_compute(("probe-steps", digest, family), run_steps)
        batch = np.stack(images)
        results = {}
        for model in models:
            if tuple(model.input_size) != tuple(seen.shape[:2]):
                raise UserError(f"Model '{model.name}' takes another input size; probe it on its own.")

            def classify(model: OnnxModel = model) -> list[dict]:
                probs = model.probabilities(batch)
                first = int(probs[0].argmax())
                return [{"top": model.class_names[int(p.argmax())], "confidence": float(p.max()),
                         "p_original": float(p[first])} for p in probs]

            results[model.name] = self._results.get_or_compute(("probe", digest, family, model.name), classify)
        return labels, probe.strip(images), results

    # ---------------------------------------------------------------- spectra
    def spectrum_panels(self, analysis: Analysis) -> list[SpectrumPanel]:
        """One panel per map (input image, then each stage's output), each with the crop box
        of the layer that downsamples that map (the next stage's layer), if spectral."""
        card = self.entry(analysis.model_name).card
        spectra = self.spectra(analysis)
        shapes = analysis.map_shapes()
        boxes: dict[str, tuple[dict, CropBox | None]] = {}
        for layer in card.downsampling_layers():
            stage = layer.get("stage")
            target = PREVIOUS_MAP.get(stage)
            if target is None or target in boxes and boxes[target][1] is not None:
                continue
            boxes[target] = (layer, _crop_box(layer))
        panels = []
        for key in ("input", *STAGES):
            if key not in spectra:
                continue
            shape = shapes[key]
            what = "input image" if key == "input" else f"{key} output"
            lines = [f"<b>{what}</b> · {shape[0]}×{shape[1]}×{shape[2]}"]
            layer, box = boxes.get(key, (None, None))
            if layer is not None:
                lines.append(_layer_caption(layer, box, key, shape))
            panels.append(SpectrumPanel(key=key, title="<br>".join(lines), spectrum=spectra[key], box=box))
        return panels


def _image_message(file: Path, error: Exception) -> str:
    """``ImageError`` text as a sentence naming the upload."""
    reason = str(error).strip()
    for prefix in ("image data: ", f"{file.name}: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    return f"{_upload_label(file)} cannot be used as an image: {reason}."


def _size(size: Any) -> str:
    return "?" if not size else f"{size[0]}×{size[1]}"


def _crop_box(layer: dict) -> CropBox | None:
    crop = layer.get("crop")
    if not crop:
        return None
    height, width = crop
    stride = layer.get("stride") or [1.0, 1.0]
    return CropBox(
        layer=str(layer.get("name")),
        kind=str(layer.get("kind")),
        stride=(float(stride[0]), float(stride[1])),
        pass_h=float(height["pass_to"]),
        pass_w=float(width["pass_to"]),
        cut_h=float(height["cut_at"]),
        cut_w=float(width["cut_at"]),
        out_size=(int(height["out_size"]), int(width["out_size"])),
    )


def _layer_caption(layer: dict, box: CropBox | None, key: str, shape: tuple[int, ...]) -> str:
    stage = str(layer.get("stage"))
    if box is None:
        stride = layer.get("stride") or [1, 1]
        return f"{stage}: strided conv s={float(stride[0]):g}, no crop"
    if key == "input":
        # The stem layer reads the stem convolution's output, which has the input's grid.
        return f"▭ crop of {stage} (on stem-conv map, {_size(layer.get('in_size'))})"
    return f"▭ crop of {stage} (reads this map)"
