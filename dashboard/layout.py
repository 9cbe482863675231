"""The Gradio Blocks of the dashboard: a shared input panel and four tabs."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from .components import RawImage
from .handlers import MAX_COMPARE, Handlers
from .service import DashboardService
from .training_views import OVERVIEW_HEADERS

__all__ = ["build_demo", "ASSETS_DIR", "example_images", "CSS"]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "tests" / "assets"

CSS = """
#dash-title h1 {margin-bottom: 0.1em}
#model-view img {image-rendering: pixelated}
#input-image img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain}
.dash-note {font-size: 0.9em; color: var(--body-text-color-subdued)}
"""

SPECTRA_HELP = (
    "Centred log-magnitude spectrum, channel mean of log(1+|FFT|), of the input and of each stage's output "
    "(zero frequency in the centre; axes in frequency bins). A downsampling layer crops the spectrum of the map it "
    "**reads**, so each layer's crop is drawn on the previous map: **red box** = pass band (mask 1, "
    "|f_h| ≤ pass_h and |f_w| ≤ pass_w), **orange band** = the DiffStride ramp (mask falls to 0 at cut); everything "
    "outside is removed. Labels give the learned strides (s_h, s_w) and the output size."
)


def example_images(folder: Path = ASSETS_DIR) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def _example_label(path: Path) -> str:
    stem = path.stem
    index, _, label = stem.partition("_")
    return f"{label} #{int(index)}" if index.isdigit() else stem


def _status_markdown(service: DashboardService) -> str:
    names = service.names()
    lines = []
    if not names:
        lines.append(f"### ⚠️ No model available\n{service.no_models_message()}")
    else:
        lines.append(
            f"<span class='dash-note'>{len(names)} model(s) from `{service.models_dir}` · default (best test accuracy): "
            f"`{service.default_name()}`</span>"
        )
    skipped = service.skipped()
    if skipped and names:
        lines.append("<span class='dash-note'>Skipped files: " + "; ".join(
            f"`{Path(f).name}` ({r})" for f, r in skipped) + "</span>")
    elif skipped:
        lines.append("\n".join(f"- `{Path(f).name}`: {r}" for f, r in skipped))
    return "\n\n".join(lines)


def _choices(service: DashboardService) -> list[tuple[str, str]]:
    out = []
    for entry in service.entries():
        acc = "" if entry.test_acc is None else f", {100 * float(entry.test_acc):.1f}%"
        out.append((f"{entry.name} ({entry.variant}{acc})", entry.name))
    return out


def _compare_default(service: DashboardService) -> list[str]:
    """Up to four models of the default model's dataset, the default first."""
    default = service.default_name()
    if default is None:
        return []
    dataset = service.entry(default).dataset
    same = [e.name for e in service.entries() if e.dataset == dataset]
    ordered = [default] + [n for n in same if n != default]
    return ordered[:MAX_COMPARE] if len(ordered) >= 2 else []


def build_demo(service: DashboardService) -> gr.Blocks:
    h = Handlers(service)
    choices = _choices(service)
    names = service.names()
    default = service.default_name()
    examples = example_images()

    with gr.Blocks(title="Spectral downsampling dashboard", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# Learnable-stride spectral downsampling\n"
            "DiffStride and spectral-pooling ResNet-18 models on CIFAR, served with ONNX Runtime. "
            "Upload an image or pick an example, then look at what each model predicts, how it sees the image in "
            "frequency, and what strides it learned.",
            elem_id="dash-title",
        )
        gr.Markdown(_status_markdown(service), elem_id="dash-status")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                image = RawImage(label="Image", sources=["upload", "webcam", "clipboard"], height=240,
                                 elem_id="input-image")
                # allow_custom_value: an unknown name reaches the handler, which explains it.
                model = gr.Dropdown(choices=choices, value=default, label="Model", elem_id="model-select",
                                    allow_custom_value=True,
                                    info="Default: the best test accuracy among the bundled models.")
                classify_btn = gr.Button("Classify", variant="primary", elem_id="classify-btn")
                if examples:
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[image],
                        example_labels=[_example_label(p) for p in examples],
                        label="Real CIFAR-10 test images (label in the name)",
                        examples_per_page=12,
                    )
            with gr.Column(scale=3):
                with gr.Tabs(elem_id="tabs") as tabs:
                    with gr.Tab("Classify", id="classify"):
                        with gr.Row():
                            label = gr.Label(num_top_classes=5, label="Top-5", elem_id="top5-label")
                            bar = gr.Plot(label="Top-5 probabilities", elem_id="top5-bar")
                        with gr.Row():
                            view = gr.Image(label="As the model sees it (32×32, nearest-neighbour ×8)", format="png",
                                            interactive=False, height=280, width=280, elem_id="model-view",
                                            buttons=["download"])
                            summary = gr.Markdown(elem_id="classify-summary")
                    with gr.Tab("Spectra", id="spectra"):
                        gr.Markdown(SPECTRA_HELP, elem_classes=["dash-note"])
                        spectra_plot = gr.Plot(label="Spectrum per stage, with each layer's learned crop",
                                               elem_id="spectra-plot")
                        with gr.Accordion("Spatial feature maps", open=False):
                            with gr.Row():
                                show_features = gr.Checkbox(label="Show feature maps", value=False,
                                                            elem_id="show-features")
                                channels = gr.Slider(0, 8, value=3, step=1, label="Channels per stage (besides the mean)")
                            feature_plot = gr.Plot(label="Feature maps: channel mean and the most active channels",
                                                   elem_id="feature-plot")
                        layers_table = gr.Dataframe(
                            headers=["layer", "stage", "kind", "stride (h × w)", "size in → out", "crop: pass/cut (kept)"],
                            label="Downsampling layers of the model", interactive=False, wrap=True,
                            elem_id="layers-table",
                        )
                    with gr.Tab("Compare", id="compare"):
                        with gr.Row():
                            compare_models = gr.Dropdown(
                                choices=choices, value=_compare_default(service), multiselect=True,
                                max_choices=MAX_COMPARE, allow_custom_value=True, label=f"Models to compare (2–{MAX_COMPARE}, same dataset)",
                                scale=4, elem_id="compare-models",
                            )
                            compare_btn = gr.Button("Compare", variant="primary", scale=1, elem_id="compare-btn")
                        with gr.Row():
                            compare_labels = [gr.Label(num_top_classes=3, visible=False, elem_id=f"compare-label-{i}")
                                              for i in range(MAX_COMPARE)]
                        compare_table = gr.Dataframe(
                            headers=["model", "variant", "top-1", "p (%)", "test acc (%)", "MFLOPs", "params (M)",
                                     "ORT latency (ms)", "map size per stage (stem → …)"],
                            label="Side by side", interactive=False, wrap=True, elem_id="compare-table",
                            column_widths=["11%", "11%", "9%", "7%", "8%", "9%", "8%", "9%", "28%"],
                        )
                        with gr.Row():
                            strides_plot = gr.Plot(label="Strides per stage", elem_id="compare-strides")
                            resolution_plot = gr.Plot(label="Resolution per stage", elem_id="compare-resolution")
                        compare_json = gr.JSON(visible=False, label="summary")
                    with gr.Tab("Training", id="training"):
                        with gr.Row():
                            training_models = gr.CheckboxGroup(choices=choices, value=names, label="Models",
                                                               scale=3, elem_id="training-models")
                            stride_model = gr.Dropdown(choices=choices, value=default,
                                                       label="Stride trajectories of", scale=2,
                                                       allow_custom_value=True)
                        curves_plot = gr.Plot(label="Accuracy and loss per epoch", elem_id="training-curves")
                        with gr.Row():
                            stride_plot = gr.Plot(label="Learned strides per epoch", elem_id="training-strides")
                        gr.Markdown("### Reproduction table (test accuracy from the model cards)")
                        reproduction = gr.Markdown(elem_id="reproduction-table", label="reproduction table")
                        overview = gr.Dataframe(headers=OVERVIEW_HEADERS, label="Bundled models", interactive=False,
                                                wrap=True, elem_id="models-overview")

        # --- events -------------------------------------------------------------------
        spectra_inputs = [image, model, show_features, channels]
        spectra_outputs = [spectra_plot, feature_plot, layers_table]
        compare_outputs = [compare_json, compare_table, strides_plot, resolution_plot]

        def after_classify(dep, tag):
            """Bar + model view, then spectra: both reuse the cached forward pass (and clear
            themselves when the input was rejected, so no stale result stays on screen)."""
            return (
                dep.then(h.views_ui, [image, model], [bar, view, summary], api_name=f"_views_{tag}",
                         api_visibility="private")
                .then(h.spectra_ui, spectra_inputs, spectra_outputs, api_name=f"_spectra_{tag}",
                      api_visibility="private")
            )

        after_classify(classify_btn.click(h.classify, [image, model], [label], api_name="classify"), "button")
        after_classify(
            gr.on([image.change, model.change], h.classify_ui, [image, model], [label], api_name="_classify_auto",
                  api_visibility="private", trigger_mode="always_last"),
            "auto",
        )
        gr.on([show_features.change, channels.release], h.spectra, spectra_inputs, spectra_outputs,
              api_name="spectra", trigger_mode="always_last")

        compare_btn.click(h.compare, [image, compare_models], compare_outputs, api_name="compare").success(
            h.compare_labels, [compare_json], compare_labels, api_name="_compare_labels", api_visibility="private")

        def compare_ui(img, models):
            if img is None or len(models or []) < 2:
                return [gr.skip()] * len(compare_outputs)
            return h.compare(img, models)

        gr.on([tabs.select, compare_models.change], compare_ui, [image, compare_models], compare_outputs,
              api_name="_compare_auto", api_visibility="private", trigger_mode="always_last").success(
            h.compare_labels, [compare_json], compare_labels, api_name="_compare_labels_auto", api_visibility="private")

        training_outputs = [curves_plot, stride_plot, reproduction, overview]
        gr.on([training_models.change, stride_model.change], h.training, [training_models, stride_model],
              training_outputs, api_name="training", trigger_mode="always_last")
        demo.load(h.training, [training_models, stride_model], training_outputs, api_name="_training_load",
                  api_visibility="private")
        gr.api(h.models, api_name="models")
    return demo
