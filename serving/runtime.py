"""Serving exported models with onnxruntime: provider probing, preprocessing, ``OnnxModel``.

This module does not import torch (the dashboard and other servers only need numpy,
Pillow and onnxruntime); ``select_providers`` merely *uses* torch when it is already
imported.

Typical use::

    model = OnnxModel("exports/models/hybrid.onnx")
    pred = model.predict("cat.jpg")          # path, bytes, PIL image or numpy array
    pred.top_k[0], pred.features["layer2"].shape, pred.latency_ms
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from PIL import Image, ImageOps

from .cards import CardError, RunCard, as_card, read_onnx_card
from .cifar import standardize
from .images import ImageError, ImageSource, load_image

__all__ = [
    "CPU",
    "CUDA",
    "ModelError",
    "OnnxModel",
    "Prediction",
    "card_problems",
    "graph_io",
    "default_threads",
    "normalization_for",
    "normalize_uint8",
    "preprocess",
    "select_providers",
    "to_rgb",
]

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
INPUT_NAME = "input"
LOGITS = "logits"
#: The feature maps an exported graph may output, in forward order (the model's
#: ``SpectralResNet.FEATURE_NAMES``); the one list the exporter and the dashboard use.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
_ORT_DEFAULT_SEVERITY = 2  # WARNING: onnxruntime's own default
_QUIET = 3  # ERROR: hides "nodes not assigned to the preferred EP"-style warnings in sessions


class ModelError(ValueError):
    """An ONNX file cannot be served (unreadable, not ONNX, no card, card/graph mismatch)."""


# --------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------
def _driver_sees_gpu() -> bool:
    """Whether a CUDA driver reports at least one device, checked silently.

    Uses torch when the process already imported it (no extra cost); otherwise asks the
    driver library directly. No driver library -> no GPU, and onnxruntime is never asked
    to create its CUDA provider (which would log an error on a CPU-only machine).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:
            return False
    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            libcuda = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            return libcuda.cuInit(0) == 0 and libcuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
        except Exception:  # a broken driver is as good as none
            return False
    return False


def _probe_model() -> bytes:
    """A one-node Identity model, serialised (IR 10: accepted by every recent onnxruntime)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "provider_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()


def _cuda_session_works() -> bool:
    """Create a tiny session on CUDA with onnxruntime's logging silenced; did CUDA stick?

    onnxruntime-gpu lists the CUDA provider whenever its library is installed, then fails
    to load it without the CUDA/cuDNN runtime and logs an error: the probe keeps that
    error out of the user's console (severity 4 = FATAL only during the probe).
    """
    ort.set_default_logger_severity(4)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(_probe_model(), options, providers=[CUDA, CPU])
        return CUDA in session.get_providers()
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


@functools.cache
def _cuda_usable() -> bool:
    if CUDA not in ort.get_available_providers():
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return _driver_sees_gpu() and _cuda_session_works()


def select_providers(prefer_gpu: bool = True) -> list[str]:
    """Execution providers to use: ``[CUDA, CPU]`` when CUDA really works, else ``[CPU]``.

    Decided by probing (cached per process), never by ``get_available_providers`` alone.
    """
    return [CUDA, CPU] if prefer_gpu and _cuda_usable() else [CPU]


def default_threads() -> int:
    """Intra-op threads per session: all cores up to 4.

    Past 4 threads a 32x32 ResNet-18 gains little per image, and a server running several
    requests at once is better served by spare cores than by wider single runs.
    """
    return max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------
def normalization_for(card: RunCard | Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of the model's input normalisation (:meth:`RunCard.mean_std`).

    The card's ``normalize`` (what this model was trained with) wins; otherwise the
    standard ``CIFAR_MEAN_STD`` of the card's dataset (``serving.cifar``).
    """
    try:
        return as_card(card).mean_std()
    except CardError as error:
        raise ModelError(str(error)) from None


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms  # optional: Pillow may be built without littleCMS

        transform = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(image, transform)
    except Exception:  # no littleCMS build: Pillow's channel copy is the best we can do
        return image.convert("RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """Composite an image with transparency over white (what a viewer shows)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale -> 8-bit RGB, scaled rather than clipped.

    ``I;16*`` spans 0..65535. ``I`` (32-bit) is treated as 16-bit data when it exceeds 255
    (Pillow opens some 16-bit files as ``I``), else as 8-bit. ``F`` is taken as [0, 1] when
    its maximum is <= 1, else as [0, 255].
    """
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values * (255.0 / 65535.0)
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255.0
    grey = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, upright: EXIF orientation, first frame, alpha on white,
    palette, CMYK, LAB, 16-bit and float greyscale, bilevel."""
    if getattr(image, "n_frames", 1) > 1 and image.tell() != 0:
        image.seek(0)  # animations: the first frame
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF must not reject an otherwise fine image
        pass
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        if mode == "La":
            image = image.convert("LA")
        return _on_white(image)
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(image)
    if mode == "LAB":
        return _lab_to_rgb(image)
    try:
        return image.convert("RGB")  # P, L, 1, CMYK, YCbCr, HSV, RGBX
    except (ValueError, OSError) as error:
        raise ImageError(f"unsupported image mode {mode!r} ({error})") from None


def _center_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def normalize_uint8(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, H, W)`` float32 ``(x/255 - mean) / std``.

    :func:`serving.cifar.standardize`, the formula training uses too, on numpy arrays.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    shape = (len(mean), 1, 1)
    return standardize(pixels, np.asarray(mean, np.float32).reshape(shape), np.asarray(std, np.float32).reshape(shape))


def preprocess(
    image: ImageSource, mean: Sequence[float], std: Sequence[float], size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """An image (anything :func:`serving.images.load_image` accepts) -> model input.

    Steps: decode/validate, EXIF orientation, convert to RGB (see :func:`to_rgb`), centre
    crop to a square, resize to ``size`` x ``size`` with Lanczos, normalise.
    Returns ``(x (1, 3, size, size) float32, seen (size, size, 3) uint8)`` where ``seen``
    is the image exactly as the model sees it before normalisation.
    """
    rgb = to_rgb(load_image(image))
    box = _center_square(*rgb.size)
    # resize(box=...) crops and resamples in one pass; reducing_gap makes large downscales
    # cheap (box-reduce first) with no visible loss at 32x32.
    small = rgb.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    seen = np.asarray(small, dtype=np.uint8).copy()
    return normalize_uint8(seen[None], mean, std), seen


# --------------------------------------------------------------------------------------
# Card / graph consistency
# --------------------------------------------------------------------------------------
Shape = Sequence[int | str | None]


def _dims(value_info: Any) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def graph_io(proto: Any) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """An ``onnx.ModelProto``'s ``(inputs, outputs)`` as ``(name, dims)`` lists, the form
    :func:`card_problems` takes (initializers excluded from inputs; symbolic dims by name)."""
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [(v.name, _dims(v)) for v in proto.graph.input if v.name not in initializers]
    return inputs, [(v.name, _dims(v)) for v in proto.graph.output]


def _dims_agree(card_shape: Shape, graph_shape: Shape) -> bool:
    if len(card_shape) != len(graph_shape):
        return False
    return all(not isinstance(a, int) or not isinstance(b, int) or a == b for a, b in zip(card_shape, graph_shape))


def card_problems(
    card: RunCard | Mapping[str, Any] | Any, inputs: Sequence[tuple[str, Shape]], outputs: Sequence[tuple[str, Shape]]
) -> list[str]:
    """Why a card (typed, or its JSON object) does not describe a graph (empty list: it does).

    ``inputs``/``outputs``: ``(name, shape)`` of the graph, dims as ints or symbolic names.
    Checks the card's own ``outputs`` list (:meth:`RunCard.output_problems`), the single
    ``input`` (B, 3, H, W), the output names and order against the card's, their static
    dims, and ``num_classes``/``class_names``.
    """
    if not isinstance(card, (RunCard, Mapping)):
        return ["card is not a JSON object"]
    card = as_card(card)
    problems = card.output_problems()
    if problems:
        return problems
    declared = card.outputs
    if [name for name, _ in inputs] != [INPUT_NAME] or len(inputs[0][1]) != 4 or inputs[0][1][1] != 3:
        problems.append(f"graph input must be one '{INPUT_NAME}' of shape (B, 3, H, W), got {list(inputs)}")
    card_names, graph_names = [o["name"] for o in declared], [name for name, _ in outputs]
    if card_names != graph_names:
        problems.append(f"card outputs {card_names} != graph outputs {graph_names}")
    else:
        for spec, (name, shape) in zip(declared, outputs):
            if "shape" in spec and not _dims_agree(spec["shape"], shape):
                problems.append(f"output {name!r}: card shape {spec['shape']} != graph shape {list(shape)}")
    if not graph_names or graph_names[0] != LOGITS:
        problems.append(f"the first output must be '{LOGITS}', got {graph_names[:1]}")
    elif isinstance(outputs[0][1][-1], int):
        classes = outputs[0][1][-1]
        if card.num_classes != classes:
            problems.append(f"card num_classes {card.num_classes} != logits width {classes}")
        if len(card.class_names or []) != classes:
            problems.append(f"card has {len(card.class_names or [])} class_names for {classes} logits")
    unknown = [name for name in graph_names[1:] if name not in STAGES]
    if unknown:
        problems.append(f"unknown feature outputs {unknown}")
    return problems


# --------------------------------------------------------------------------------------
# The served model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One image's result.

    probs: ``(K,)`` softmax probabilities; top_k: ``[(class name, prob), ...]`` best first;
    features: ``{stage: (C, h, w) float32}``; model_input: the ``(32, 32, 3)`` uint8 RGB
    image the model saw; latency_ms: onnxruntime run time; preprocess_ms: decoding and
    resizing time.
    """

    probs: np.ndarray
    top_k: list[tuple[str, float]]
    features: dict[str, np.ndarray]
    model_input: np.ndarray
    latency_ms: float
    logits: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]
    preprocess_ms: float = 0.0

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def confidence(self) -> float:
        return self.top_k[0][1]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _session_options(intra_op_threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or default_threads()
    options.inter_op_num_threads = 1  # the graph is a chain: no parallel branches worth a pool
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = _QUIET
    # No busy-waiting between runs: with spinning on, a finished run's threads keep a core
    # busy for a while, which slowed whatever ran next (the web server, the next request,
    # the other model) on a 2-core machine. The cost is a thread wake-up per run (~tens of us).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _io_spec(args) -> list[tuple[str, list]]:
    return [(a.name, list(a.shape)) for a in args]


class OnnxModel:
    """An exported model served by onnxruntime. Safe to share between threads.

    Args:
        path: the ``.onnx`` file written by ``python -m exports.export``.
        providers: execution providers; default :func:`select_providers`.
        intra_op_threads: threads per run; default :func:`default_threads`.

    Attributes: ``name``, ``path``, ``card`` (the embedded model card, a
    :class:`~serving.cards.RunCard`),
    ``class_names``, ``feature_names`` (stage outputs in graph order), ``output_names``,
    ``providers`` (as the session actually uses them), ``input_size`` ``(H, W)``,
    ``mean``/``std`` (input normalisation).

    onnxruntime's ``InferenceSession.run`` is thread-safe and this class keeps no
    per-call state, so one instance serves concurrent requests.
    """

    def __init__(
        self, path: str | os.PathLike, providers: Sequence[str] | None = None, intra_op_threads: int | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path.name}: model file not found")
        self.session = self._open_session(providers, intra_op_threads)
        self.card = self._read_card()
        inputs, outputs = _io_spec(self.session.get_inputs()), _io_spec(self.session.get_outputs())
        problems = card_problems(self.card, inputs, outputs)
        if problems:
            raise ModelError(f"{self.path.name}: card does not match the graph: {problems[0]}")
        self.name: str = str(self.card.name or self.path.stem)
        self.class_names: list[str] = list(self.card.class_names)
        self.output_names: list[str] = [name for name, _ in outputs]
        self.feature_names: list[str] = self.output_names[1:]
        self.input_size: tuple[int, int] = (int(inputs[0][1][2]), int(inputs[0][1][3]))
        self.mean, self.std = normalization_for(self.card)
        self.providers: list[str] = list(self.session.get_providers())

    def __repr__(self) -> str:
        return f"OnnxModel(name={self.name!r}, variant={self.card.variant!r}, providers={self.providers})"

    def _open_session(self, providers: Sequence[str] | None, threads: int | None) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                str(self.path), _session_options(threads), providers=list(providers or select_providers())
            )
        except Exception as error:  # onnxruntime raises several private exception types
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"{self.path.name}: not a loadable ONNX model ({reason[:200]})") from None

    def _read_card(self) -> RunCard:
        try:
            return read_onnx_card(self.session)  # the session's metadata: no second parse of the file
        except CardError as error:
            raise ModelError(f"{self.path.name}: {error}") from None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Normalised ``(B, 3, H, W)`` float32 batch -> ``(logits (B, K), {stage: (B, C, h, w)})``."""
        batch = np.asarray(batch)
        expected = (3, *self.input_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.shape[0] < 1:
            raise ValueError(f"expected a batch of shape (B, {', '.join(map(str, expected))}), got {batch.shape}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = self.session.run(self.output_names, {INPUT_NAME: batch})
        return outputs[0], dict(zip(self.feature_names, outputs[1:]))

    def logits(self, images: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3)`` uint8 images, as the model sees them -> ``(B, K)`` logits.

        Only the logits output is fetched (no copies of the feature maps): the path for
        evaluating many images (``robustness``, accuracy checks).
        """
        batch = normalize_uint8(np.asarray(images), self.mean, self.std)
        if tuple(batch.shape[2:]) != self.input_size or len(batch) < 1:
            raise ValueError(f"expected images of {self.input_size[0]}x{self.input_size[1]} pixels, got {images.shape}")
        return self.session.run([LOGITS], {INPUT_NAME: batch})[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """:meth:`logits` through the softmax :meth:`predict_pixels` uses: ``(B, K)`` float32."""
        return _softmax(self.logits(images))

    def preprocess(self, image: ImageSource) -> tuple[np.ndarray, np.ndarray]:
        """:func:`preprocess` with this model's normalisation and input size."""
        return preprocess(image, self.mean, self.std, self.input_size[0])

    def prepare(self, image: ImageSource) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 RGB image exactly as the model sees it (decoded, upright,
        centre-cropped, resized), before normalisation. Cache this, not the decoded upload."""
        return self.preprocess(image)[1]

    def predict(self, image: ImageSource, top_k: int = 5) -> Prediction:
        """Classify one image (path, bytes, PIL image or array); raises ``ImageError`` on bad input."""
        start = time.perf_counter()
        seen = self.prepare(image)
        prepared = time.perf_counter()
        return replace(self.predict_pixels(seen, top_k), preprocess_ms=(prepared - start) * 1000.0)

    def predict_pixels(self, seen: np.ndarray, top_k: int = 5) -> Prediction:
        """Classify an image already prepared by :meth:`prepare` (``(H, W, 3)`` uint8)."""
        seen = np.asarray(seen)
        if seen.shape != (*self.input_size, 3) or seen.dtype != np.uint8:
            raise ValueError(f"expected a prepared {self.input_size} RGB uint8 image, got {seen.shape} {seen.dtype}")
        x = normalize_uint8(seen[None], self.mean, self.std)
        ready = time.perf_counter()
        logits, features = self.run(x)
        done = time.perf_counter()
        probs = _softmax(logits[0])
        order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(probs)))]
        return Prediction(
            probs=probs,
            top_k=[(self.class_names[i], float(probs[i])) for i in order],
            features={name: value[0] for name, value in features.items()},
            model_input=seen,
            latency_ms=(done - ready) * 1000.0,
            logits=logits[0],
        )
