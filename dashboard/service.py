"""The dashboard's model-side logic, free of Gradio: loading, validation, caching, analysis.

Everything the UI shows for one (image, model) pair comes from one :class:`Analysis`,
computed once and kept in a small LRU cache keyed by the image's content hash and the model
name, so the Classify, Spectra and Compare views of the same upload share one forward pass.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np

from hybrid_model.spectra import log_spectrum  # numpy only: this process never imports torch

from .figures import CropBox, SpectrumPanel

__all__ = ["UserError", "Analysis", "DashboardService", "STAGES", "LruCache"]

#: Feature maps in forward order (``SpectralResNet.FEATURE_NAMES``); "input" is the image.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
#: The map each stage's downsampling layer reads (the previous stage's output).
PREVIOUS_MAP = {"stem": "input", "layer1": "stem", "layer2": "layer1", "layer3": "layer2", "layer4": "layer3",
                "head": "layer4"}
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


class UserError(Exception):
    """A problem the user can act on; its message is shown as is."""


class LruCache:
    """A small thread-safe LRU mapping."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = compute()  # outside the lock: concurrent misses may compute twice, harmlessly
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class Analysis:
    """One image through one model, with lazily derived views."""

    model_name: str
    digest: str
    prediction: Any
    _spectra: dict[str, np.ndarray] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def topk(self) -> list[tuple[str, float]]:
        return [(str(c), float(p)) for c, p in self.prediction.top_k]

    @property
    def top_class(self) -> str:
        return self.topk[0][0]

    def spectra(self) -> dict[str, np.ndarray]:
        """Centred log-magnitude spectrum of the input image and of every stage's output."""
        with self._lock:
            if self._spectra is None:
                image = np.asarray(self.prediction.model_input, dtype=np.float32).transpose(2, 0, 1) / 255.0
                spectra = {"input": log_spectrum(image)}
                for stage, fmap in self.prediction.features.items():
                    spectra[stage] = log_spectrum(np.asarray(fmap, dtype=np.float32))
                self._spectra = spectra
            return self._spectra

    def map_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"input": (3, *np.asarray(self.prediction.model_input).shape[:2])}
        shapes.update({s: tuple(np.asarray(f).shape) for s, f in self.prediction.features.items()})
        return shapes


def _read_upload(path: str | Path | None) -> bytes:
    if path is None or (isinstance(path, str) and not path.strip()):
        raise UserError("No image was provided: upload an image (or pick one of the examples) first.")
    file = Path(path)
    try:
        size = file.stat().st_size
    except OSError:
        raise UserError(f"The uploaded file '{file.name}' is no longer available; please upload it again.") from None
    if size == 0:
        raise UserError(f"The uploaded file '{file.name}' is empty (0 bytes); please upload an image file.")
    if size > MAX_UPLOAD_BYTES:
        raise UserError(
            f"The uploaded file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB."
        )
    return file.read_bytes()


class DashboardService:
    """Models, cards and cached analyses for the dashboard.

    Args:
        models_dir: folder of exported models (``exports.registry.ModelRegistry``).
        cache_size: how many (image, model) analyses to keep.
    """

    def __init__(self, models_dir: str | Path, cache_size: int = 128) -> None:
        self.models_dir = Path(models_dir)
        self.registry = None
        self.load_error: str | None = None
        try:
            from exports.registry import ModelRegistry

            self.registry = ModelRegistry(self.models_dir)
        except Exception as exc:  # the app must still start and say why
            self.load_error = f"{type(exc).__name__}: {exc}"
        self._analyses = LruCache(cache_size)
        self._images = LruCache(cache_size)
        self._figures = LruCache(cache_size * 2)

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
        if not self.models_dir.is_dir():
            lines.append("The folder does not exist; start the app with --models-dir pointing at exported models.")
        elif not self.skipped():
            lines.append("The folder holds no exported model; export one with `python -m exports.export`.")
        return " ".join(lines)

    def preload(self) -> None:
        """Create every model's onnxruntime session now (the registry loads lazily), so the
        first request of each model does not pay for it. Failures surface on use."""
        for name in self.names():
            try:
                self.registry.get(name)
            except Exception:  # noqa: BLE001 - reported when the model is requested
                pass

    def model(self, name: str | None):
        """The named model (the best bundled one for ``None``/empty), or a clear :class:`UserError`."""
        if not self.names():
            raise UserError(self.no_models_message())
        name = name or self.default_name()
        if name not in self.names():
            raise UserError(f"Unknown model '{name}'. Available models: {', '.join(self.names())}.")
        try:
            return self.registry.get(name)
        except Exception as exc:
            raise UserError(f"Model '{name}' could not be loaded: {exc}") from None

    def card(self, name: str | None) -> dict:
        """The model card (from the registry's validation; no session is created)."""
        return dict(self.entry(name).card)

    def entry(self, name: str | None) -> Any:
        if not self.names():
            raise UserError(self.no_models_message())
        name = name or self.default_name()
        for entry in self.entries():
            if entry.name == name:
                return entry
        raise UserError(f"Unknown model '{name}'. Available models: {', '.join(self.names())}.")

    # ---------------------------------------------------------------- images
    def load(self, path: str | Path | None) -> tuple[str, Any]:
        """``(content digest, RGB-convertible PIL image)`` of an upload, validated."""
        data = _read_upload(path)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()

        def decode():
            from exports.images import ImageError, load_image

            try:
                return load_image(data)
            except ImageError as exc:
                raise UserError(_image_message(Path(path).name, exc)) from None

        return digest, self._images.get_or_compute(digest, decode)

    # ---------------------------------------------------------------- analyses
    def analyse(self, path: str | Path | None, model_name: str | None) -> Analysis:
        model = self.model(model_name)
        digest, image = self.load(path)

        def run() -> Analysis:
            try:
                prediction = model.predict(image)
            except UserError:
                raise
            except Exception as exc:
                from exports.images import ImageError

                if isinstance(exc, ImageError):
                    raise UserError(_image_message(Path(path).name, exc)) from None
                raise UserError(f"Model '{model.name}' failed on this image: {exc}") from None
            return Analysis(model.name, digest, prediction)

        return self._analyses.get_or_compute((digest, model.name), run)

    def cached_figure(self, key: Hashable, build: Callable[[], Any]) -> Any:
        return self._figures.get_or_compute(key, build)

    # ---------------------------------------------------------------- spectra
    def spectrum_panels(self, analysis: Analysis) -> list[SpectrumPanel]:
        """One panel per map (input image, then each stage's output), each with the crop box
        of the layer that downsamples that map (the next stage's layer), if spectral."""
        card = self.card(analysis.model_name)
        spectra = analysis.spectra()
        shapes = analysis.map_shapes()
        boxes: dict[str, tuple[dict, CropBox | None]] = {}
        for layer in card.get("layers") or []:
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

    def layer_rows(self, name: str) -> list[list[Any]]:
        """Rows for the layer table: layer, stage, kind, stride, in -> out, crop."""
        rows = []
        for layer in self.card(name).get("layers") or []:
            stride = layer.get("stride") or [1, 1]
            crop = layer.get("crop")
            crop_text = "—"
            if crop:
                h, w = crop
                crop_text = (f"h {h['pass_to']:.1f}/{h['cut_at']:.1f} ({h['kept']} bins); "
                             f"w {w['pass_to']:.1f}/{w['cut_at']:.1f} ({w['kept']} bins)")
            rows.append([
                layer.get("name"), layer.get("stage"), layer.get("kind"),
                f"{float(stride[0]):.3f} × {float(stride[1]):.3f}",
                f"{_size(layer.get('in_size'))} → {_size(layer.get('out_size'))}", crop_text,
            ])
        return rows


def _image_message(name: str, error: Exception) -> str:
    """``ImageError`` text as a sentence naming the upload."""
    reason = str(error).strip()
    for prefix in ("image data: ", f"{name}: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    return f"The upload '{name}' cannot be used as an image: {reason}."


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
