"""The Robustness tab through a real server: /robustness reads ``robustness.json`` beside the
models (and says when there is none), /robustness_probe transforms a real CIFAR image step by
step and classifies every step with each chosen model. The browser test covers the tab on a
desktop and a phone (``tests/test_browser.py``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from conftest import ASSETS, run_app
from robustness import report
from serving.cifar import CIFAR10_CLASSES

pytestmark = pytest.mark.timeout(600)
PLAN = report.Plan(images=40, corruption_images=5, filter_images=5, radii=(4.0,),
                   corruptions=("gaussian_noise", "contrast"))


@pytest.fixture(scope="module")
def measured_dir(models_dir: Path, tmp_path_factory) -> Path:
    """The test models with robustness figures for two of them."""
    folder = tmp_path_factory.mktemp("measured") / "models"
    shutil.copytree(models_dir, folder)
    report.measure_folder(folder, PLAN, names=["resnet18", "hybrid"], progress=False)
    return folder


def test_robustness_endpoints(measured_dir: Path, cifar_images, tmp_path):
    image = cifar_images[0]
    with run_app(measured_dir, tmp_path) as server:
        client = Client(server.url, verbose=False)
        note, table, paired, shift, frequency, corruption = client.predict(["resnet18", "hybrid", "spectral"], "contrast",
                                                                           api_name="/robustness")
        assert "python -m robustness" in note and "Not measured (new or changed since): spectral" in note
        assert [row[0] for row in table["data"]] == ["resnet18", "hybrid"] and table["headers"][2].startswith("consistency")
        assert all("%" in cell and "±" in cell for row in table["data"] for cell in row[1:])
        # hybrid against the strided baseline, trial by trial: "+1.2 [−0.3, +2.6]" per column
        assert [row[0] for row in paired["data"]] == ["hybrid"] and len(paired["data"][0]) == len(table["headers"])
        assert all(cell[0] in "+−0" and cell.count("[") == 1 for cell in paired["data"][0][1:])
        shift_plot = json.loads(shift["plot"])
        assert [t["name"] for t in shift_plot["data"]] == ["resnet18", "hybrid"]
        assert shift_plot["data"][0]["x"] == list(range(9))
        assert len(json.loads(frequency["plot"])["data"]) == 4  # two models x (low, high)
        assert "contrast" in json.loads(corruption["plot"])["layout"]["title"]["text"]

        picture, figure, rows = client.predict(handle_file(str(image.path)), ["resnet18", "hybrid"], "shift (circular)",
                                               api_name="/robustness_probe")
        assert Path(picture).is_file()
        steps = json.loads(figure["plot"])["data"]
        assert [t["name"] for t in steps] == ["resnet18", "hybrid"] and len(steps[0]["x"]) == 9
        assert len(rows["data"]) == 18 and all(r[2].split(" ")[0] in CIFAR10_CLASSES for r in rows["data"])
        assert rows["data"][0][1] == "0 px" and rows["data"][0][3] == rows["data"][0][4]  # step 0: p(original) = top
        _, _, severity_rows = client.predict(handle_file(str(image.path)), ["spectral"], "jpeg_compression",
                                             api_name="/robustness_probe")
        assert [r[1] for r in severity_rows["data"]] == ["clean"] + [f"severity {s}" for s in range(1, 6)]

        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="must be among .*; got .rain."):
            client.predict(handle_file(str(image.path)), ["resnet18"], "rain", api_name="/robustness_probe")
        with pytest.raises(AppError, match="Upload an image"):
            client.predict(None, ["resnet18"], "low-pass", api_name="/robustness_probe")
        with pytest.raises(AppError, match="must be among .*; got 'nope'"):
            client.predict(["nope"], None, api_name="/robustness")


def test_without_a_robustness_file_the_tab_says_how_to_make_one(models_dir: Path, tmp_path):
    import gradio as gr

    from dashboard import DashboardService
    from dashboard.handlers import Handlers

    handlers = Handlers(DashboardService(models_dir))
    note, table, *_ = handlers.robustness(None, None)
    assert "python -m robustness" in note and table == []
    with pytest.raises(gr.Error, match="Unknown model 'nope'"):  # callers that bypass the page's choices
        handlers.robustness(["nope"])
    with pytest.raises(gr.Error, match="Unknown transform 'rain'"):
        handlers.robustness_probe(str(next(ASSETS.glob("*.png"))), ["resnet18"], "rain")
