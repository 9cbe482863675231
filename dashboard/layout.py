"""The Gradio Blocks of the dashboard: a shared input panel and four tabs."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from exports.serving.registry import by_accuracy

from .components import RawImage
from .handlers import COMPARE_HEADERS, LAYER_HEADERS, MAX_COMPARE, Handlers
from .service import DashboardService
from .training_views import OVERVIEW_HEADERS, budget

__all__ = ["build_demo", "ASSETS_DIR", "example_images", "CSS"]

ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = ROOT / "tests" / "assets"
NARROW_PX = 768  # below this the columns stack (phones): see SCROLL_TO_RESULTS_JS

CSS = """
#dash-title h1 {margin-bottom: 0.1em}
#model-view img {image-rendering: pixelated}
#input-image img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain}
.dash-note {font-size: 0.9em; color: var(--body-text-color-subdued)}
/* Example thumbnails: CIFAR images are 32x32, show them crisp and small */
#examples img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: cover}
#examples .gallery {gap: 4px}
#examples .gallery-item .container {width: 50px !important; height: 50px !important; max-width: none}
.scroll-note {font-size: 0.85em; color: var(--body-text-color-subdued); margin: 0}
@media (min-width: 1000px) {.scroll-note {display: none}}
"""

# Column widths in pixels, not percent: on a phone the tables then scroll sideways instead of
# squeezing every cell to one character per line (a note says so below 1000 px).
TABLE_PX = {
    "layers": ["172px", "70px", "92px", "90px", "180px", "290px"],
    "compare": ["130px", "120px", "72px", "120px", "72px", "72px", "250px"],
    "overview": ["110px", "130px", "72px", "260px", "90px", "220px"],
}

# Client-side snippets (run in the browser, no server round trip).
VIEWPORT_JS = "() => window.innerWidth"
# A new image closes old error toasts (clearing a refused upload must not: its toast explains why).
CLOSE_TOASTS_JS = (
    "(img) => { if (img) document.querySelectorAll('[data-testid=toast-close]').forEach((b) => b.click()); }"
)
# A plot updated while its tab was hidden keeps Plotly's default 700-px width when the tab
# is shown again; a resize event makes Plotly fit every plot to its container.
RESIZE_PLOTS_JS = "() => { setTimeout(() => window.dispatchEvent(new Event('resize')), 60); }"
# On a phone the input panel and the examples stack above the tabs: bring the results into view.
SCROLL_TO_RESULTS_JS = (
    f"() => {{ if (window.innerWidth < {NARROW_PX}) {{ const el = document.getElementById('tabs');"
    " if (el) el.scrollIntoView({block: 'start'}); } }"
)

SPECTRA_HELP = (
    "Centred log-magnitude spectrum, channel mean of log(1+|FFT|), of the input and of each stage's output "
    "(zero frequency in the centre; axes in frequency bins; **one colour scale for all panels**, so brightness "
    "compares across stages). A downsampling layer crops the spectrum of the map it **reads**, so each layer's crop "
    "is drawn on the previous map: **red box** = pass band (mask 1, |f_h| ≤ pass_h and |f_w| ≤ pass_w), **orange "
    "band** = the DiffStride ramp (mask falls to 0 at cut); everything outside is removed.\n\n"
    "**Learned stride vs effective stride.** The pass band is size/s wide; the ramp keeps a few bins more (that is "
    "what makes s learnable), so the output is larger than size/s: 32×32 with s = 1.99 keeps 26×26 bins, an *effective* "
    "stride (in/out size) of 32/26 ≈ 1.23. Each label gives the learned s = (s_h, s_w), the output size and the "
    "effective stride."
)


def example_images(folder: Path = ASSETS_DIR) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def _shown_path(path: Path) -> str:
    """A folder as the page names it: relative to the project, else only its name (the
    server's absolute paths are not the visitor's business)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def _status_markdown(service: DashboardService) -> str:
    names = service.names()
    lines = []
    if not names:
        lines.append(f"### ⚠️ No model available\n{service.no_models_message()}")
    else:
        lines.append(
            f"<span class='dash-note'>{len(names)} model(s) from `{_shown_path(service.models_dir)}` · "
            f"default (best test accuracy): `{service.default_name()}`</span>"
        )
    skipped = service.skipped()
    if skipped and names:
        lines.append("<span class='dash-note'>Skipped files: " + "; ".join(
            f"`{Path(f).name}` ({r})" for f, r in skipped) + "</span>")
    elif skipped:
        lines.append("\n".join(f"- `{Path(f).name}`: {r}" for f, r in skipped))
    return "\n\n".join(lines)


def _choices(service: DashboardService) -> list[tuple[str, str]]:
    """Dropdown entries: the name, the test accuracy and how the model was trained."""
    out = []
    for entry in service.entries():
        parts = [] if entry.variant == entry.name else [str(entry.variant)]
        if entry.test_acc is not None:
            parts.append(f"{100 * float(entry.test_acc):.1f}% test")
        parts.append(budget(entry.card, short=True))
        out.append((f"{entry.name} ({', '.join(parts)})", entry.name))
    return out


def _stride_default(service: DashboardService) -> str | None:
    """The default model if it learned strides, else the best model that did (a trajectory
    to look at, rather than "no learnable strides")."""
    default = service.default_name()
    learners = [e.name for e in by_accuracy(service.entries()) if e.card.learned_strides]
    return default if default in learners or not learners else learners[0]


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
    examples = example_images()
    h = Handlers(service, examples)
    choices = _choices(service)
    names = service.names()
    default = service.default_name()

    with gr.Blocks(title="Spectral downsampling dashboard", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# Learnable-stride spectral downsampling\n"
            "DiffStride and spectral-pooling ResNet-18 models on CIFAR, served with ONNX Runtime. "
            "Upload an image or pick an example, then look at what each model predicts, how it sees the image in "
            "frequency, and what strides it learned.",
            elem_id="dash-title",
        )
        gr.Markdown(_status_markdown(service), elem_id="dash-status")
        # Browser-side state: the window width (spectra grid columns), the open tab, and
        # which (image, models) the Compare outputs on screen belong to.
        viewport = gr.Number(value=0, visible=False)
        active_tab = gr.State("Classify")
        compare_shown = gr.State("")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                image = RawImage(label="Image", sources=["upload", "webcam", "clipboard"], height=240,
                                 elem_id="input-image")
                # allow_custom_value: an unknown name reaches the handler, which explains it.
                model = gr.Dropdown(choices=choices, value=default, label="Model", elem_id="model-select",
                                    allow_custom_value=True,
                                    info="Default: the best test accuracy among the bundled models. "
                                         "In brackets: test accuracy and training budget (epochs, images).")
                classify_btn = gr.Button("Classify", variant="primary", elem_id="classify-btn")
                if examples:
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[image],
                        label="Real CIFAR-10 test images (the true label shows beside the prediction)",
                        examples_per_page=len(examples),
                        elem_id="examples",
                    )
            with gr.Column(scale=3):
                with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:
                    with gr.Tab("Classify", id="classify"):
                        with gr.Row():
                            label = gr.Label(num_top_classes=5, label="Top-5", elem_id="top5-label")
                            bar = gr.Plot(label="Top-5 probabilities", elem_id="top5-bar")
                        with gr.Row():
                            # Columns with a minimum width: side by side on a desktop, stacked on a phone.
                            with gr.Column(min_width=280):
                                summary = gr.Markdown(elem_id="classify-summary")
                            with gr.Column(min_width=280):
                                view = gr.Image(label="As the model sees it", show_label=False, format="png",
                                                interactive=False, height=256, width=256, elem_id="model-view",
                                                buttons=["download"])
                    with gr.Tab("Spectra", id="spectra"):
                        gr.Markdown(SPECTRA_HELP, elem_classes=["dash-note"])
                        spectra_plot = gr.Plot(label="Spectrum per stage, with each layer's learned crop",
                                               show_label=False, elem_id="spectra-plot")
                        with gr.Accordion("Spatial feature maps", open=False):
                            with gr.Row():
                                show_features = gr.Checkbox(label="Show feature maps", value=False,
                                                            elem_id="show-features")
                                channels = gr.Slider(0, 8, value=3, step=1, label="Channels per stage (besides the mean)")
                            feature_plot = gr.Plot(label="Feature maps: channel mean and the most active channels",
                                                   elem_id="feature-plot")
                        gr.Markdown("Scroll the table sideways for all columns →", elem_classes=["scroll-note"])
                        layers_table = gr.Dataframe(
                            headers=LAYER_HEADERS, value=h.layer_table(default),
                            label="Downsampling layers of the model (s: learned or fixed stride; effective "
                                  "stride = input size / output size)",
                            interactive=False, wrap=True, elem_id="layers-table",
                            column_widths=TABLE_PX["layers"],
                        )
                        spectra_api = gr.Button(visible=False)  # /spectra for API callers
                    with gr.Tab("Compare", id="compare"):
                        with gr.Row():
                            compare_models = gr.Dropdown(
                                choices=choices, value=_compare_default(service), multiselect=True,
                                max_choices=MAX_COMPARE, allow_custom_value=True,
                                label=f"Models to compare (2–{MAX_COMPARE}, same dataset)",
                                scale=4, elem_id="compare-models",
                            )
                            compare_btn = gr.Button("Compare", variant="primary", scale=1, elem_id="compare-btn")
                        compare_status = gr.Markdown(elem_id="compare-status")
                        with gr.Row():
                            compare_labels = [gr.Label(num_top_classes=3, visible=False, elem_id=f"compare-label-{i}",
                                                       min_width=150)
                                              for i in range(MAX_COMPARE)]
                        gr.Markdown("Scroll the table sideways for all columns →", elem_classes=["scroll-note"])
                        compare_table = gr.Dataframe(
                            headers=COMPARE_HEADERS, label="Side by side (training budget: epochs · training images)",
                            interactive=False, wrap=True, elem_id="compare-table",
                            column_widths=TABLE_PX["compare"],
                        )
                        with gr.Row():
                            strides_plot = gr.Plot(label="Strides per stage", elem_id="compare-strides")
                            resolution_plot = gr.Plot(label="Resolution per stage", elem_id="compare-resolution")
                        compare_json = gr.JSON(visible=False, label="summary")
                        # /compare for API callers; the browser uses the button and the tab.
                        compare_api = gr.Button(visible=False)
                    with gr.Tab("Training", id="training"):
                        with gr.Row():
                            training_models = gr.CheckboxGroup(choices=choices, value=names, label="Models",
                                                               scale=3, elem_id="training-models")
                            stride_model = gr.Dropdown(choices=choices, value=_stride_default(service),
                                                       label="Stride trajectories of", scale=2,
                                                       allow_custom_value=True)
                        curves_plot = gr.Plot(label="Accuracy and loss per epoch", elem_id="training-curves")
                        with gr.Row():
                            stride_plot = gr.Plot(label="Learned strides per epoch", elem_id="training-strides")
                        gr.Markdown("### Reproduction table (test accuracy from the model cards)")
                        reproduction = gr.Markdown(elem_id="reproduction-table", label="reproduction table")
                        gr.Markdown("Scroll the table sideways for all columns →", elem_classes=["scroll-note"])
                        overview = gr.Dataframe(headers=OVERVIEW_HEADERS, label="Bundled models", interactive=False,
                                                wrap=True, elem_id="models-overview", max_height=900,
                                                column_widths=TABLE_PX["overview"])

        _wire_events(demo, h, locals())
    return demo


def _wire_events(demo: gr.Blocks, h: Handlers, c: dict) -> None:
    """Events. Browser chains (private) never raise after the first step, so an upload's
    problem shows as one toast; public endpoints (/classify, /spectra, /compare,
    /training, /models) keep their documented signatures."""
    image, model, tabs = c["image"], c["model"], c["tabs"]
    spectra_inputs = [image, model, c["show_features"], c["channels"]]
    compare_view = [c["compare_status"], c["compare_table"], c["strides_plot"], c["resolution_plot"],
                    *c["compare_labels"], c["compare_shown"]]
    compare_auto_inputs = [image, c["compare_models"], c["active_tab"], c["compare_shown"]]

    demo.load(None, None, c["viewport"], js=VIEWPORT_JS)

    def after_classify(dep, tag):
        """Bar + model view, then spectra: both reuse the cached forward pass (and clear
        themselves when the input was rejected, so no stale result stays on screen)."""
        return (
            dep.then(h.views_ui, [image, model], [c["bar"], c["view"], c["summary"]], api_name=f"_views_{tag}",
                     api_visibility="private")
            .then(h.spectra_ui, [*spectra_inputs, c["viewport"]], [c["spectra_plot"], c["feature_plot"]],
                  api_name=f"_spectra_{tag}", api_visibility="private")
        )

    button = c["classify_btn"].click(h.classify, [image, model], [c["label"]], api_name="classify")
    after_classify(button, "button")
    button.failure(h.drop_rejected_input, [image, model], [image], api_name="_drop_button", api_visibility="private")

    image.change(None, [image], None, js=CLOSE_TOASTS_JS)  # an old error must not sit beside a new result
    auto = gr.on([image.change, model.change], h.classify_ui, [image, model], [c["label"]],
                 api_name="_classify_auto", api_visibility="private", trigger_mode="always_last")
    auto.success(None, None, None, js=SCROLL_TO_RESULTS_JS)
    auto.failure(h.drop_rejected_input, [image, model], [image], api_name="_drop_auto", api_visibility="private")
    after_classify(auto, "auto").then(h.compare_auto, compare_auto_inputs, compare_view,
                                      api_name="_compare_after_image", api_visibility="private")
    model.change(h.layer_table, [model], [c["layers_table"]], api_name="_layers", api_visibility="private")

    gr.on([c["show_features"].change, c["channels"].release], h.spectra_ui, [*spectra_inputs, c["viewport"]],
          [c["spectra_plot"], c["feature_plot"]], api_name="_spectra_options", api_visibility="private",
          trigger_mode="always_last")
    c["spectra_api"].click(h.spectra, spectra_inputs, [c["spectra_plot"], c["feature_plot"], c["layers_table"]],
                           api_name="spectra")

    # Compare: the tab and the button in the browser, /compare for API callers.
    c["compare_btn"].click(h.compare_view, [image, c["compare_models"]], compare_view,
                           api_name="_compare_button", api_visibility="private")
    c["compare_models"].change(h.compare_auto, compare_auto_inputs, compare_view, api_name="_compare_models",
                               api_visibility="private", trigger_mode="always_last")
    tabs.select(None, None, None, js=RESIZE_PLOTS_JS)
    tabs.select(h.select_tab, [image, c["compare_models"], c["compare_shown"]], [c["active_tab"], *compare_view],
                api_name="_tab", api_visibility="private", trigger_mode="always_last")
    c["compare_api"].click(h.compare, [image, c["compare_models"]],
                           [c["compare_json"], c["compare_table"], c["strides_plot"], c["resolution_plot"]],
                           api_name="compare")

    training_inputs = [c["training_models"], c["stride_model"]]
    training_outputs = [c["curves_plot"], c["stride_plot"], c["reproduction"], c["overview"]]
    gr.on([c["training_models"].change, c["stride_model"].change], h.training, training_inputs,
          training_outputs, api_name="training", trigger_mode="always_last")
    demo.load(h.training, training_inputs, training_outputs, api_name="_training_load", api_visibility="private")
    gr.api(h.models, api_name="models")
