"""The dashboard's API, driven with gradio_client against a real server (``python app.py``)
serving real ONNX exports through onnxruntime; no mocks on the model path."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import (
    ASSETS,
    DEFAULT_MODEL,
    TEST_ACC,
    VARIANTS,
    data_url,
    files_in,
    raw_call,
    reference_prediction,
    top1,
)
from serving.cifar import CIFAR10_CLASSES
from serving.paths import REPO_ROOT

pytestmark = pytest.mark.timeout(600)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def classify(client: Client, path: Path | str, model: str | None = None) -> dict:
    args = [handle_file(str(path))] + ([model] if model is not None else [])
    return client.predict(*args, api_name="/classify")


def assert_label(value: dict) -> str:
    """A gr.Label value whose top label is a lower-case CIFAR-10 class; returns it."""
    assert isinstance(value, dict), value
    top = value["label"]
    assert top in CIFAR10_CLASSES and top == top.lower(), value
    confidences = value["confidences"]
    assert len(confidences) == 5
    probs = [c["confidence"] for c in confidences]
    assert probs == sorted(probs, reverse=True)
    assert confidences[0]["label"] == top
    assert 0.0 < sum(probs) <= 1.0 + 1e-5
    assert len({c["label"] for c in confidences}) == 5
    return top


def figure(plot_value: dict) -> dict:
    """The Plotly figure inside a gr.Plot API value."""
    assert plot_value["type"] == "plotly"
    return json.loads(plot_value["plot"])


def error_text(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def write_image(path: Path, image: Image.Image, **save) -> Path:
    image.save(path, **save)
    return path


def cifar_array(index: int = 1) -> np.ndarray:
    return np.asarray(Image.open(sorted(ASSETS.glob("*.png"))[index]).convert("RGB"))


# --------------------------------------------------------------------------------------
# The server process stays free of torch
# --------------------------------------------------------------------------------------
def test_dashboard_modules_do_not_import_torch():
    code = "import sys, app, dashboard.service; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


# --------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------
def test_api_exposes_every_endpoint(client: Client):
    api = client.view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    assert {"/classify", "/spectra", "/compare", "/training", "/models"} <= names
    params = [p["parameter_name"] for p in api["named_endpoints"]["/classify"]["parameters"]]
    assert params == ["image", "model"]
    model_param = api["named_endpoints"]["/classify"]["parameters"][1]
    assert model_param["parameter_has_default"] and model_param["parameter_default"] == DEFAULT_MODEL


def test_models_endpoint(client: Client, models_dir: Path):
    info = client.predict(api_name="/models")
    assert info["default"] == DEFAULT_MODEL
    assert sorted(m["name"] for m in info["models"]) == sorted(VARIANTS)
    assert info["skipped"] == []
    for entry in info["models"]:
        assert entry["dataset"] == "cifar10" and entry["size_bytes"] > 1_000_000
        assert Path(entry["file"]).name == f"{entry['name']}.onnx"


def test_classify_real_cifar_images_with_the_default_model(client: Client, cifar_images, models_dir: Path):
    for image in cifar_images[:6]:
        expected = reference_prediction(models_dir / f"{DEFAULT_MODEL}.onnx", image.path)
        assert assert_label(classify(client, image.path)) == top1(expected), image.path.name


@pytest.mark.parametrize("model", VARIANTS)
def test_classify_every_model(client: Client, cifar_images, models_dir: Path, model: str):
    """Each model's answer is its own: the argmax and probabilities computed without the app."""
    served = classify(client, cifar_images[0].path, model)
    expected = reference_prediction(models_dir / f"{model}.onnx", cifar_images[0].path)
    assert assert_label(served) == top1(expected)
    for entry in served["confidences"]:
        assert entry["confidence"] == pytest.approx(expected[entry["label"]], abs=1e-5)


def test_classify_matches_the_runtime(client: Client, cifar_images, models_dir: Path):
    """The served probabilities are the ONNX model's (same file, same preprocessing)."""
    from serving.runtime import OnnxModel

    model = OnnxModel(models_dir / "resnet18.onnx")
    for image in cifar_images[:3]:
        expected = model.predict(str(image.path))
        served = classify(client, image.path, "resnet18")
        assert served["label"] == expected.top_k[0][0]
        got = {c["label"]: c["confidence"] for c in served["confidences"]}
        for name, prob in expected.top_k:
            assert got[name] == pytest.approx(prob, abs=1e-5)


def test_spectra_draws_each_layer_crop_on_the_map_it_reads(client: Client, cifar_images, models_dir: Path):
    from serving.runtime import OnnxModel

    card = OnnxModel(models_dir / "hybrid.onnx").card
    spectral_layers = [layer for layer in card.layers if layer["crop"]]
    grid, features, table = client.predict(handle_file(str(cifar_images[1].path)), "hybrid", False, 3,
                                           api_name="/spectra")
    fig = figure(grid)
    heatmaps = [t for t in fig["data"] if t["type"] == "heatmap"]
    # input image + stem, layer1..4, head
    assert len(heatmaps) == 7
    crops = [s for s in fig["layout"]["shapes"] if s.get("name", "").startswith("crop:")]
    ramps = [s for s in fig["layout"]["shapes"] if s.get("name", "").startswith("ramp:")]
    assert sorted(s["name"][5:] for s in crops) == sorted(layer["name"] for layer in spectral_layers)
    assert len(ramps) == sum(layer["kind"] == "diffstride" for layer in spectral_layers)  # the head has no ramp
    titles = " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert "reads this map" in titles and "learned s=(" in titles
    # layer2's crop sits on layer1's output: its panel is 32x32 and the box is in its axes
    layer2 = next(layer for layer in spectral_layers if layer["stage"] == "layer2")
    box = next(s for s in crops if s["name"] == f"crop:{layer2['name']}")
    panel = heatmaps[[i for i, t in enumerate(heatmaps) if t["xaxis"] == box["xref"]][0]]
    assert (len(panel["z"]), len(panel["z"][0])) == tuple(layer2["in_size"])
    # feature maps only on demand
    assert not figure(features)["data"]
    assert [row[0] for row in table["data"]] == [layer["name"] for layer in card.layers]


def test_spectra_feature_maps_on_demand_and_conv_model(client: Client, cifar_images):
    grid, features, _ = client.predict(handle_file(str(cifar_images[2].path)), "resnet18", True, 2,
                                       api_name="/spectra")
    fig = figure(grid)
    assert not [s for s in fig["layout"].get("shapes", []) if s["name"].startswith("crop:")]  # strided convs: no crop
    assert "strided conv" in " ".join(a["text"] for a in fig["layout"]["annotations"])
    maps = figure(features)["data"]
    assert len(maps) == 5 * 3  # stem, layer1..4 x (mean + 2 channels)


def test_compare_two_to_four_models(client: Client, cifar_images, models_dir: Path):
    summary, table, strides, resolution = client.predict(
        handle_file(str(cifar_images[3].path)), ["hybrid", "resnet18", "diffstride"], api_name="/compare")
    models = summary["models"]
    assert [m["name"] for m in models] == ["hybrid", "resnet18", "diffstride"]
    for m in models:
        assert m["topk"][0][0] == top1(reference_prediction(models_dir / f"{m['name']}.onnx", cifar_images[3].path))
        assert m["flops"] > 0 and m["latency_ms"] > 0 and m["test_acc"] == pytest.approx(TEST_ACC[m["name"]])
    assert models[1]["resolution"]["layer4"] == [4, 4]  # plain ResNet-18: 32 -> 4
    assert len(table["data"]) == 3
    bars = figure(strides)["data"]
    assert {b["legendgroup"] for b in bars} == {"hybrid", "resnet18", "diffstride"}
    assert len(figure(resolution)["data"]) == 3


@pytest.mark.parametrize("models, message", [
    (["hybrid"], "Choose between 2 and 4 models"),
    (["hybrid", "resnet18", "spectral", "diffstride", "diffstride2"], "Choose between 2 and 4 models"),
    (["hybrid", "nosuchmodel"], "Unknown model 'nosuchmodel'"),
    (["hybrid", "hybrid"], "Choose between 2 and 4 models to compare (got 1 different: 'hybrid' given more than once)."),
])
def test_compare_rejects_bad_selections(client: Client, cifar_images, models, message):
    with pytest.raises(AppError) as excinfo:
        client.predict(handle_file(str(cifar_images[0].path)), models, api_name="/compare")
    assert message in error_text(excinfo)


def test_training_endpoint(client: Client):
    curves, strides, reproduction, overview = client.predict(api_name="/training")
    traces = figure(curves)["data"]
    assert len(traces) == len(VARIANTS) * 4  # train/test x acc/loss per model
    stride_traces = figure(strides)["data"]  # default model: hybrid, 4 DiffStride layers x (s_h, s_w)
    assert len(stride_traces) == 8 and all(len(t["x"]) == 6 for t in stride_traces)
    assert "CIFAR-10" in reproduction and "47.00" in reproduction  # hybrid's (synthetic) test accuracy
    assert sorted(row[0] for row in overview["data"]) == sorted(VARIANTS)
    curves, strides, _, overview = client.predict(["resnet18", "spectral"], "resnet18", api_name="/training")
    assert len(figure(curves)["data"]) == 8
    assert "no learnable strides" in json.dumps(figure(strides))
    assert len(overview["data"]) == 2


def test_compare_refuses_models_of_different_datasets(mixed_models_dir: Path, cifar_images):
    from serving.cifar import CIFAR100_CLASSES

    app = InProcessApp(mixed_models_dir)
    info = app("models")
    assert {m["name"]: m["dataset"] for m in info["models"]} == {"resnet18": "cifar10", "resnet18-c100": "cifar100"}
    with pytest.raises(gr.Error) as excinfo:
        app("compare", str(cifar_images[0].path), ["resnet18", "resnet18-c100"])
    message = error_text(excinfo)
    assert "must share one dataset" in message and "resnet18-c100 (cifar100)" in message
    top = app("classify", str(cifar_images[0].path), "resnet18-c100")
    assert top["label"] in CIFAR100_CLASSES and len(top["confidences"]) == 5
    assert top["label"] == top1(reference_prediction(mixed_models_dir / "resnet18-c100.onnx", cifar_images[0].path))


# --------------------------------------------------------------------------------------
# Unusual but valid images: all must classify
# --------------------------------------------------------------------------------------
def _unusual_images(folder: Path) -> dict[str, Path]:
    rgb = Image.fromarray(cifar_array(1))
    big = rgb.resize((320, 240), Image.Resampling.NEAREST)
    frames = [Image.fromarray(np.roll(cifar_array(1), k, axis=1)).convert("P") for k in range(3)]
    grey16 = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
    out = {
        "grayscale": write_image(folder / "grey.png", rgb.convert("L")),
        "rgba": write_image(folder / "rgba.png", Image.merge("RGBA", (*rgb.split(), Image.new("L", rgb.size, 128)))),
        "palette": write_image(folder / "palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE)),
        "cmyk": write_image(folder / "cmyk.jpg", rgb.convert("CMYK"), format="JPEG"),
        "16-bit": write_image(folder / "grey16.png", Image.fromarray(grey16)),
        "bilevel": write_image(folder / "bilevel.png", rgb.convert("1")),
        "non-square jpeg": write_image(folder / "photo.jpg", big, quality=90),
        "webp": write_image(folder / "image.webp", rgb, format="WEBP"),
        "bmp": write_image(folder / "image.bmp", rgb),
        "tiff": write_image(folder / "image.tiff", rgb),
    }
    gif = folder / "animated.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["animated gif"] = gif
    return out


@pytest.fixture(scope="module")
def unusual_images(tmp_path_factory) -> dict[str, Path]:
    return _unusual_images(tmp_path_factory.mktemp("unusual"))


def test_unusual_images_are_what_they_claim(unusual_images):
    modes = {name: Image.open(path).mode for name, path in unusual_images.items()}
    assert modes["grayscale"] == "L" and modes["rgba"] == "RGBA" and modes["palette"] == "P"
    assert modes["cmyk"] == "CMYK" and modes["16-bit"] in ("I;16", "I") and modes["bilevel"] == "1"
    assert getattr(Image.open(unusual_images["animated gif"]), "n_frames", 1) == 3


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "palette", "cmyk", "16-bit", "bilevel", "animated gif",
                                  "non-square jpeg", "webp", "bmp", "tiff"])
def test_valid_unusual_images_classify(client: Client, unusual_images, kind):
    assert_label(classify(client, unusual_images[kind]))


def test_unusual_image_spectra_and_compare(client: Client, unusual_images):
    grid, _, _ = client.predict(handle_file(str(unusual_images["cmyk"])), api_name="/spectra")
    assert len(figure(grid)["data"]) == 7
    summary, *_ = client.predict(handle_file(str(unusual_images["animated gif"])), ["hybrid", "resnet18"],
                                 api_name="/compare")
    assert len(summary["models"]) == 2


# --------------------------------------------------------------------------------------
# Bad input: a clear message, and the server keeps serving
# --------------------------------------------------------------------------------------
def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str | tuple[str, ...]]]:
    """Bad uploads and the words their message must contain (any of a tuple)."""
    png = io.BytesIO()
    Image.fromarray(cifar_array(2)).save(png, format="PNG")
    data = png.getvalue()
    truncated = folder / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    corrupted = bytearray(data)  # valid signature and header, damaged pixel data
    start = len(corrupted) // 2
    corrupted[start:start + 64] = bytes(b ^ 0xFF for b in corrupted[start:start + 64])
    garbage = folder / "garbage.png"
    garbage.write_bytes(bytes(corrupted))
    noise = folder / "noise.png"
    noise.write_bytes(data[:8] + bytes(range(256)) * 8)  # PNG signature, then noise
    text = folder / "notes.txt"
    text.write_text("this is not an image\n" * 20)
    fake = folder / "fake.jpg"
    fake.write_bytes(b"%PDF-1.4\n" + b"0" * 2000)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    huge = folder / "huge.png"
    Image.new("L", (10000, 10000), 0).save(huge, optimize=True)
    return {
        "text file": (text, "not an image"),
        "pdf named .jpg": (fake, "not an image"),
        "truncated png": (truncated, "corrupted"),
        "corrupted bytes": (garbage, "corrupted"),
        "signature then noise": (noise, ("not an image", "corrupted")),
        "empty upload": (empty, "empty"),
        "10000x10000 image": (huge, "too large"),
    }


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind", ["text file", "pdf named .jpg", "truncated png", "corrupted bytes",
                                  "signature then noise", "empty upload", "10000x10000 image"])
@pytest.mark.parametrize("endpoint", ["/classify", "/spectra"])
def test_bad_images_give_a_clear_message(client: Client, bad_inputs, cifar_images, kind, endpoint):
    path, expected = bad_inputs[kind]
    with pytest.raises(AppError) as excinfo:
        client.predict(handle_file(str(path)), api_name=endpoint)
    message = error_text(excinfo)
    assert any(e in message.lower() for e in ((expected,) if isinstance(expected, str) else expected)), message
    assert path.name in message  # names the upload
    assert "Traceback" not in message and "Internal error" not in message
    assert_label(classify(client, cifar_images[0].path))  # still serving


def test_bad_image_in_compare(client: Client, bad_inputs):
    path, expected = bad_inputs["truncated png"]
    with pytest.raises(AppError) as excinfo:
        client.predict(handle_file(str(path)), ["hybrid", "resnet18"], api_name="/compare")
    assert expected in error_text(excinfo).lower()


def test_missing_image_and_unknown_model(client: Client, cifar_images):
    with pytest.raises(AppError) as excinfo:
        client.predict(None, api_name="/classify")
    assert "No image was provided" in error_text(excinfo)
    with pytest.raises(AppError) as excinfo:
        classify(client, cifar_images[0].path, "no-such-model")
    message = error_text(excinfo)
    assert "Unknown model 'no-such-model'" in message and "hybrid" in message


def documented_refusal(request: str) -> str:
    """The message docs/api.md's table of refusals shows for ``request``."""
    match = re.search(rf"^\| {re.escape(request)} \| `([^`]+)`", (REPO_ROOT / "docs" / "api.md").read_text(), re.M)
    assert match, f"docs/api.md has no row '{request}'"
    return match.group(1)


def test_upload_over_the_size_limit_is_refused(app_server, tmp_path: Path, cifar_images):
    """max_file_size: the upload route refuses a 12 MB upload with HTTP 413 and the sentence
    docs/api.md shows (Gradio's own named the limit in bytes); gradio_client checks the limit
    itself before sending, with its own ValueError, as docs/api.md says; the server keeps serving."""
    big = tmp_path / "big.png"
    big.write_bytes(cifar_images[0].path.read_bytes() + b"\0" * (12 * 2**20))
    boundary = "dashboardtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(app_server.url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=30)
    assert excinfo.value.code == 413
    assert excinfo.value.read().decode() == documented_refusal("a 12 MB image") == \
        "The uploaded file is 12.0 MB; the limit is 10 MB."
    assert excinfo.value.headers["Content-Type"].startswith("text/plain")
    client = Client(app_server.url, verbose=False)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 10485760 bytes"):
        classify(client, big)
    assert "exceeds the maximum file size of 10485760 bytes" in (REPO_ROOT / "docs" / "api.md").read_text()
    assert_label(classify(client, cifar_images[0].path))


# --------------------------------------------------------------------------------------
# Model folders with problems: the app still builds and says why. In-process, no server:
# the Blocks ``app.create_app`` makes for the folder, each endpoint's own function called
# with what a client sends, its outputs as the client receives them.
# --------------------------------------------------------------------------------------
class InProcessApp:
    """``app.create_app(models)`` without a server: ``app("classify", path, model)``."""

    def __init__(self, models: Path) -> None:
        from app import create_app

        self.demo, self.service = create_app(models)
        self.endpoints = {fn.api_name: fn for fn in self.demo.fns.values() if fn.api_name}

    def __call__(self, api_name: str, *args):
        """The endpoint's answer (postprocessed by its output components, as served), or
        the ``gr.Error`` the caller would see."""
        endpoint = self.endpoints[api_name]
        result = endpoint.fn(*args)
        if not endpoint.outputs:  # gr.api: the value is the answer
            return result
        values = [result] if len(endpoint.outputs) == 1 else list(result)
        served = [component.postprocess(value) for component, value in zip(endpoint.outputs, values)]
        served = [v.model_dump() if hasattr(v, "model_dump") else v for v in served]
        return served[0] if len(served) == 1 else served

    def status(self) -> str:
        """The status line at the top of the page (model count, or why there is none, and the skipped files)."""
        return next(block.value for block in self.demo.blocks.values() if getattr(block, "elem_id", None) == "dash-status")


def test_broken_model_files_are_skipped_with_reasons(broken_models_dir: Path, cifar_images):
    app = InProcessApp(broken_models_dir)
    info = app("models")
    assert [m["name"] for m in info["models"]] == ["resnet18"] and info["default"] == "resnet18"
    skipped = {Path(s["file"]).name: s["reason"] for s in info["skipped"]}
    assert set(skipped) == {"corrupt.onnx", "empty.onnx", "nocard.onnx"}
    assert all(reason.strip() for reason in skipped.values())
    assert "card" in skipped["nocard.onnx"].lower()
    assert "corrupt.onnx" in app.status()  # the skipped files are listed in the UI
    assert_label(app("classify", str(cifar_images[0].path)))
    with pytest.raises(gr.Error) as excinfo:
        app("classify", str(cifar_images[0].path), "corrupt")
    assert "Unknown model 'corrupt'" in error_text(excinfo)


def test_no_valid_model_still_builds(tmp_path: Path, cifar_images):
    folder = tmp_path / "no-models"
    folder.mkdir()
    (folder / "broken.onnx").write_bytes(b"not onnx at all")
    app = InProcessApp(folder)
    info = app("models")
    assert info["models"] == [] and info["default"] is None
    assert [Path(s["file"]).name for s in info["skipped"]] == ["broken.onnx"]
    assert "No valid model was found" in app.status() and "broken.onnx" in app.status()
    for call in (lambda: app("classify", str(cifar_images[0].path)),
                 lambda: app("spectra", str(cifar_images[0].path)),
                 lambda: app("training")):
        with pytest.raises(gr.Error) as excinfo:
            call()
        message = error_text(excinfo)
        assert "No valid model was found" in message and "broken.onnx" in message


def test_missing_models_folder_still_builds(tmp_path: Path, cifar_images, caplog):
    from app import log_models

    app = InProcessApp(tmp_path / "does-not-exist")
    info = app("models")
    assert info["models"] == []
    with pytest.raises(gr.Error) as excinfo:
        app("classify", str(cifar_images[0].path))
    assert "No valid model was found" in error_text(excinfo)
    # The terminal says so at start-up too (a mistyped --models-dir is not a silent empty page).
    with caplog.at_level("INFO", logger="dashboard"):
        log_models(app.service)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "does-not-exist" in warnings[0] and "does not exist" in warnings[0], caplog.text


def test_a_file_given_as_the_models_folder_is_named_a_file(tmp_path: Path):
    from dashboard.service import DashboardService

    not_a_folder = tmp_path / "README.md"
    not_a_folder.write_text("# not models")
    message = DashboardService(not_a_folder).no_models_message()
    assert "It is a file, not a folder" in message and "does not exist" not in message


def test_a_web_address_as_the_image_says_so(client: Client):
    """An http(s) URL is never fetched (the server would download for anyone): one sentence."""
    with pytest.raises(AppError) as excinfo:
        client.predict({"url": "http://example.com/cat.png", "path": None, "meta": {"_type": "gradio.FileData"}},
                       api_name="/classify")
    assert "Images are not fetched from web addresses" in error_text(excinfo)


def test_start_up_log_names_the_models(models_dir: Path, caplog):
    from app import log_models

    with caplog.at_level("INFO", logger="dashboard"):
        log_models(InProcessApp(models_dir).service)
    assert f"{len(VARIANTS)} model(s), 0 skipped" in caplog.text and "WARNING" not in caplog.text, caplog.text


def test_model_file_removed_while_serving(models_dir: Path, tmp_path: Path, cifar_images):
    """A model file deleted after start-up (sessions are created on first use, as with
    --no-preload): a clear message for that model; the other models keep working."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("resnet18", "spectral"):
        shutil.copy(models_dir / f"{name}.onnx", folder / f"{name}.onnx")
    app = InProcessApp(folder)
    assert_label(app("classify", str(cifar_images[1].path), "resnet18"))
    (folder / "spectral.onnx").unlink()
    with pytest.raises(gr.Error) as excinfo:
        app("classify", str(cifar_images[1].path), "spectral")
    message = error_text(excinfo)
    assert "Model 'spectral' could not be loaded" in message and "not found" in message
    assert_label(app("classify", str(cifar_images[2].path), "resnet18"))


# --------------------------------------------------------------------------------------
# Reliability under abuse (issue 15): nothing refused stays on disk, caches bounded in
# bytes, every raw-API refusal is one sentence to the caller and one line in the log.
# One server for this section, with its own upload folder, a 2 MB cache budget and uploads
# deleted after 6 s (swept every 1.5 s).
# --------------------------------------------------------------------------------------
CACHE_MB = 2
UPLOAD_TTL_S = 6


@pytest.fixture(scope="module")
def guarded(models_dir: Path, tmp_path_factory):
    from conftest import run_app

    uploads = tmp_path_factory.mktemp("uploads")
    with run_app(models_dir, tmp_path_factory.mktemp("app-logs"),
                 extra_args=("--upload-dir", str(uploads), "--cache-mb", str(CACHE_MB),
                             "--upload-ttl-min", str(UPLOAD_TTL_S / 60))) as server:
        yield server, uploads


def assert_one_sentence(message: str) -> None:
    assert isinstance(message, str) and message, message
    assert "\n" not in message and "Traceback" not in message and "0x" not in message, message
    assert "http" not in message.lower() and "<" not in message, message
    assert message.endswith("."), message
    assert len(re.findall(r"[.!?](?:\s|$)", message)) == 1, f"more than one sentence: {message}"


def health(url: str) -> dict:
    return Client(url, verbose=False).predict(api_name="/health")


def test_byte_lru_cache_evicts_by_bytes():
    from dashboard.service import ByteLruCache

    cache = ByteLruCache(max_bytes=10_000)
    for key in range(5):
        cache.put(key, np.zeros(3000, np.uint8))  # ~3.1 KB each: three fit
    assert len(cache) == 3 and cache.nbytes <= 10_000 and cache.get(0) is None and cache.get(4) is not None
    cache.get_or_compute("big", lambda: np.zeros(20_000, np.uint8))  # larger than the budget: not kept
    assert cache.get("big") is None and cache.nbytes <= 10_000


def test_oversized_data_url_leaves_nothing_on_disk(guarded, cifar_images):
    """The issue's repro: an image over the limit as a base64 data URL to /call/classify is
    refused and none of its bytes stay in the upload folder: a 12 MB one (16 MB of base64) by
    the request body limit, HTTP 413 before the body is kept, decoded or written (issue 23);
    one of 10.2 MB, within the body limit, by the app."""
    server, uploads = guarded
    before = files_in(uploads)
    png = cifar_images[0].path.read_bytes()
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        raw_call(server.url, "classify", [data_url(png + b"\0" * (12 * 2**20)), None])
    assert excinfo.value.code == 413
    sentence = excinfo.value.read().decode()
    assert sentence == documented_refusal("a 12 MB image inline")
    assert_one_sentence(sentence)
    event, body = raw_call(server.url, "classify", [data_url(png + b"\0" * (int(10.2 * 2**20) - len(png))), None])
    assert event == "error" and body["error"] == documented_refusal("a 10.2 MB image inline"), body
    assert_one_sentence(body["error"])
    assert files_in(uploads) <= before  # (the schedule may have swept older files meanwhile)
    assert not files_in(uploads / "dashboard_uploads")


def test_over_limit_upload_route_leaves_nothing_on_disk(guarded, cifar_images):
    server, uploads = guarded
    before = files_in(uploads)
    from benchmarks.raw_api import upload

    try:
        status, _ = upload(server.url, "big.png", cifar_images[0].path.read_bytes() + bytes(11 * 2**20))
    except urllib.error.URLError as error:  # the server may cut the body off once it is over the limit
        assert isinstance(error.reason, ConnectionError), error
    else:
        assert status == 413
    time.sleep(0.5)
    assert files_in(uploads) <= before
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("kind", ["text file", "truncated png", "empty upload"])
def test_refused_uploads_are_deleted(guarded, bad_inputs, kind):
    server, uploads = guarded
    before = files_in(uploads)
    path, _ = bad_inputs[kind]
    with pytest.raises(AppError) as excinfo:
        classify(Client(server.url, verbose=False), path)
    assert path.name in error_text(excinfo)
    assert files_in(uploads) <= before, "the refused upload is still on disk"


def test_caches_stay_within_their_byte_budget(guarded, tmp_path: Path):
    from benchmarks.app_latency import distinct_images

    server, _ = guarded
    client = Client(server.url, verbose=False)
    for path in distinct_images(tmp_path, 10):
        assert_label(classify(client, path, "hybrid"))
        grid, features, _ = client.predict(handle_file(str(path)), "hybrid", True, 2, api_name="/spectra")
        # hybrid's feature maps (2.4 MB) exceed the 0.5 MB feature budget: recomputed, still drawn
        assert len(figure(grid)["data"]) == 7 and len(figure(features)["data"]) == 6 * 3
    state = health(server.url)
    assert state["cache_budget_bytes"] == CACHE_MB * 2**20
    assert 0 < state["cache_bytes"] <= state["cache_budget_bytes"], state


RAW_ERRORS = {
    "no inputs": ("classify", lambda img: [], "takes 2 input values"),
    "text where a file goes": ("classify", lambda img: ["hello", None], "must be a file reference"),
    "a server path": ("classify", lambda img: [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, None],
                      "only reads files uploaded"),
    "slider above its maximum": ("spectra", lambda img: [data_url(img), None, False, 100],
                                 "'channels' must be between 0 and 8, got 100"),
    "text for a slider": ("spectra", lambda img: [data_url(img), None, False, "abc"], "'channels' has the wrong type"),
    "unknown model": ("classify", lambda img: [data_url(img), "nope"], "Unknown model 'nope'"),
    "one model to compare": ("compare", lambda img: [data_url(img), "hybrid"], "Choose between 2 and 4"),
    "not an image": ("classify", lambda img: [data_url(b"plain text, no image"), None],
                     "The pasted image (data URL) cannot be used as an image: not an image"),  # not its hash name
    "an empty data URL": ("classify", lambda img: [data_url(b""), None],
                          "The pasted image (data URL) is empty (0 bytes)"),
    "a number for the models to compare": ("compare", lambda img: [data_url(img), 5], "must be a list of 2 to 4"),
    "a model that is not a choice": ("training", lambda img: [[1, 2], None], "'models' must be among"),
}


@pytest.mark.parametrize("case", list(RAW_ERRORS))
def test_raw_api_errors_are_one_sentence_and_one_log_line(guarded, cifar_images, case):
    server, _ = guarded
    api, data, expected = RAW_ERRORS[case]
    event, body = raw_call(server.url, api, data(cifar_images[0].path.read_bytes()))
    assert event == "error", body
    message = body["error"]
    assert expected in message
    assert_one_sentence(message)
    time.sleep(0.2)  # the log line is written before the reply, but flushed by another thread
    log = server.log()
    assert "Traceback" not in log
    assert sum(message in line for line in log.splitlines()) == 1
    assert all(len(line) < 600 for line in log.splitlines() if message in line)


def test_uploads_are_swept_on_schedule(guarded, tmp_path: Path):
    server, uploads = guarded
    image = tmp_path / "swept.png"
    Image.fromarray(cifar_array(5)[::-1]).save(image)
    assert_label(classify(Client(server.url, verbose=False), image, "resnet18"))
    assert any(f.name == "swept.png" for f in files_in(uploads))
    deadline = time.monotonic() + UPLOAD_TTL_S + 30
    while any(f.name == "swept.png" for f in files_in(uploads)):
        assert time.monotonic() < deadline, "the upload outlived its TTL"
        time.sleep(1)
    assert health(server.url)["upload_files"] == len(files_in(uploads))


def test_shutdown_deletes_the_uploads(guarded, cifar_images, tmp_path: Path):
    """Last in this section: stops the section's server. SIGTERM shuts down cleanly and the
    upload folder keeps nothing but Gradio's copies of the bundled examples."""
    import hashlib
    import signal

    from benchmarks.app_latency import distinct_images

    server, uploads = guarded
    client = Client(server.url, verbose=False)
    for path in distinct_images(tmp_path, 3):
        assert_label(classify(client, path, "resnet18"))
    raw_call(server.url, "classify", [data_url(cifar_images[2].path.read_bytes()), "resnet18"])  # a pasted image
    assert files_in(uploads / "dashboard_uploads")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0, server.log()[-2000:]
    examples = {hashlib.sha256(p.read_bytes()).digest() for p in ASSETS.glob("*.png")}
    left = [f for f in files_in(uploads) if hashlib.sha256(f.read_bytes()).digest() not in examples]
    assert not left, f"uploads left after shutdown: {left[:5]}"
    assert "Traceback" not in server.log()


def test_stride_trajectory_defaults_to_a_model_that_learned_strides():
    """The Training tab opens on a stride trajectory: the default model if it learned strides,
    else the most accurate model that did (the GPU bundle's best model is `spectral`)."""
    from types import SimpleNamespace

    from dashboard.layout import _stride_default

    def entry(name, acc, learned):
        return SimpleNamespace(name=name, test_acc=acc, card=SimpleNamespace(learned_strides=learned))

    def service(*entries):
        best = max(entries, key=lambda e: e.test_acc).name
        return SimpleNamespace(default_name=lambda: best, entries=lambda: list(entries))

    strides = {"stem_pool": [1.14, 1.14]}
    assert _stride_default(service(entry("spectral", 0.89, {}), entry("hybrid", 0.87, strides),
                                   entry("diffstride", 0.88, strides))) == "diffstride"
    assert _stride_default(service(entry("spectral", 0.85, {}), entry("hybrid", 0.87, strides))) == "hybrid"
    assert _stride_default(service(entry("spectral", 0.89, {}), entry("resnet18", 0.87, {}))) == "spectral"


def test_sigterm_during_start_up_shuts_down_cleanly(models_dir: Path, tmp_path: Path):
    """A stop sent while ``launch()`` is still starting (a supervisor's SIGTERM right after
    spawning): exit 0, no traceback, the clean-up line. It used to raise KeyboardInterrupt
    out of Gradio's start-up self-check, and the process then aborted ("terminate called
    without an active exception") with onnxruntime still creating sessions in the preload thread."""
    import os
    import signal

    from conftest import free_port

    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    command = [sys.executable, str(REPO_ROOT / "app.py"), "--port", str(free_port()), "--models-dir", str(models_dir),
               "--upload-dir", str(tmp_path / "uploads")]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:  # Gradio prints the URL, then checks it: stop it in between
        lines.append(line)
        if "Running on local URL" in line:
            process.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output and "terminate called" not in output and "shut down; deleted" in output, output


def test_a_port_it_cannot_listen_on_is_one_line_and_exit_2(tmp_path):
    """A busy port (another dashboard, say), an impossible port or host: one line naming
    what to change, exit 2, before Gradio starts (it printed a 15-line traceback and aborted)."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [(["--port", str(port)], f"cannot listen on 127.0.0.1:{port} (Address already in use); start with another --port"),
                 (["--port", "99999"], "--port 99999 is not a TCP port (1-65535)"),
                 (["--host", "no-such-host.invalid", "--port", "7861"], "--host no-such-host.invalid is not an address")]
        for args, message in cases:
            result = subprocess.run([sys.executable, str(REPO_ROOT / "app.py"), *args, "--upload-dir", str(tmp_path)],
                                    cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
            assert result.returncode == 2, result.stderr[-2000:]
            assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr


def _signal_handled(pid: int, signum: int) -> bool:
    """Whether process ``pid`` catches ``signum`` (Linux: the SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize("signame, delay", [("SIGTERM", 0.5), ("SIGTERM", 1.5), ("SIGTERM", 3.0), ("SIGINT", 1.5)])
def test_a_stop_while_importing_is_one_line_and_exit_0(tmp_path: Path, signame: str, delay: float):
    """SIGTERM or Ctrl-C in the first seconds, while app.py still imports Gradio and
    onnxruntime or builds the app: exit 0 and one line, as docs/api.md says. It used to die
    by the signal (exit -15, nothing printed) or print a KeyboardInterrupt traceback from
    inside an import. ``delay`` counts from the moment the interpreter runs Python code."""
    import os
    import signal

    from conftest import free_port

    signum = getattr(signal, signame)
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "app.py"), "--port", str(free_port()),
                                "--upload-dir", str(tmp_path / "uploads")],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _signal_handled(process.pid, signal.SIGINT):  # Python installs its Ctrl-C handler first
            assert time.monotonic() < deadline and process.poll() is None, "the interpreter did not start"
            time.sleep(0.005)
        time.sleep(delay)
        assert process.poll() is None, process.communicate()[0]
        process.send_signal(signum)
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    lines = output.strip().splitlines()
    early = f"stopped while starting ({signame}); nothing was served, no uploads to delete"
    if delay < 1:  # surely still importing
        assert lines == [early], output
    else:  # a fast machine may already be serving: then Gradio's shutdown and the clean-up line
        assert lines[-1] == early or "shut down; deleted 0 upload(s)" in lines[-1], output


def test_shutdown_counts_the_uploads_it_deleted(models_dir: Path, tmp_path: Path, cifar_images):
    """The shutdown line's count is the number of uploads that left the folder. Gradio's own
    shutdown clean-up (``Blocks(delete_cache=...)``) deleted them first when no client was
    connected, and the line said "deleted 0 upload(s)" after 4 were removed."""
    import signal

    from benchmarks.app_latency import distinct_images
    from benchmarks.raw_api import upload
    from conftest import run_app

    uploads = tmp_path / "uploads"
    with run_app(models_dir, tmp_path, extra_args=("--upload-dir", str(uploads), "--no-preload")) as server:
        examples = files_in(uploads)  # Gradio's copies of the example images, made at start-up; they stay
        for index, path in enumerate(distinct_images(tmp_path, 4)):
            status, served = upload(server.url, path.name, path.read_bytes())
            assert status == 200, served
            if index % 2:  # used by a call, or only uploaded: both are deleted
                assert raw_call(server.url, "classify", [{"path": served, "meta": {"_type": "gradio.FileData"}},
                                                        "resnet18"])[0] == "complete"
        assert raw_call(server.url, "classify", [data_url(cifar_images[3].path.read_bytes()), "resnet18"])[0] == "complete"
        made = files_in(uploads) - examples
        assert len(made) == 5, made  # four uploads, one pasted image
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log()[-2000:]
    assert not made & files_in(uploads)
    assert f"shut down; deleted 5 upload(s) from {uploads.resolve()}" in server.log(), server.log()[-2000:]
