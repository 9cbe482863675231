"""The Gradio Blocks of the dashboard: a shared input panel and five tabs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from robustness.corruptions import CORRUPTIONS
from robustness.probe import FAMILIES
from serving.paths import REPO_ROOT
from serving.registry import by_accuracy

from .components import RawImage
from .handlers import COMPARE_HEADERS, LAYER_HEADERS, MAX_COMPARE, Handlers
from .robustness_views import MEAN_OF_ALL, PAIRED_LABEL, PROBE_HEADERS, SUMMARY_HEADERS
from .service import DashboardService
from .training_views import OVERVIEW_HEADERS, budget

__all__ = ["build_demo", "EXAMPLES_DIR", "example_images", "CSS"]

#: The example images the page offers (30 real CIFAR-10 test images, ``<index>_<label>.png``).
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
NARROW_PX = 768  # below this the columns stack (phones): see SCROLL_TO_RESULTS_JS

CSS = """
#dash-title h1 {margin-bottom: 0.1em}
#model-view img {image-rendering: pixelated}
#probe-strip img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain}
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
    "robustness": ["110px"] + ["120px"] * 6,
    "probe": ["110px", "90px", "140px", "90px", "110px"],
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


def example_images(folder: Path = EXAMPLES_DIR) -> list[Path]:
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def _shown_path(path: Path) -> str:
    """A folder as the page names it: relative to the project, else only its name (the
    server's absolute paths are not the visitor's business)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
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


# --------------------------------------------------------------------------------------
# The page: the shared input panel, then one class per tab that builds its components
# (inside its gr.Tab) and wires its events. build_demo wires them in a fixed order.
# --------------------------------------------------------------------------------------
@dataclass
class BrowserState:
    """Browser-side state: the window width (spectra grid columns), the open tab, and which
    (image, models) the Compare outputs on screen belong to."""

    viewport: gr.Number
    active_tab: gr.State
    compare_shown: gr.State

    @classmethod
    def build(cls) -> BrowserState:
        return cls(gr.Number(value=0, visible=False), gr.State("Classify"), gr.State(""))


@dataclass
class InputPanel:
    """The left column, shared by every tab: the image, the model and the Classify button."""

    image: RawImage
    model: gr.Dropdown
    button: gr.Button

    @classmethod
    def build(cls, choices: list[tuple[str, str]], default: str | None, examples: list[Path]) -> InputPanel:
        image = RawImage(label="Image", sources=["upload", "webcam", "clipboard"], height=240, elem_id="input-image")
        # allow_custom_value: an unknown name reaches the handler, which explains it.
        model = gr.Dropdown(choices=choices, value=default, label="Model", elem_id="model-select",
                            allow_custom_value=True,
                            info="Default: the best test accuracy among the bundled models. "
                                 "In brackets: test accuracy and training budget (epochs, images).")
        button = gr.Button("Classify", variant="primary", elem_id="classify-btn")
        if examples:
            gr.Examples(
                examples=[[str(p)] for p in examples],
                inputs=[image],
                label="Real CIFAR-10 test images (the true label shows beside the prediction)",
                examples_per_page=len(examples),
                elem_id="examples",
            )
        return cls(image, model, button)


@dataclass
class ClassifyTab:
    """Top-5, the probabilities, the summary and the image as the model sees it (/classify).

    Its events start every tab's update for a new image or model: the label first, then
    the bar and model view, then the spectra, then (while that tab is open) the comparison.
    """

    label: gr.Label
    bar: gr.Plot
    summary: gr.Markdown
    view: gr.Image

    @classmethod
    def build(cls) -> ClassifyTab:
        with gr.Tab("Classify", id="classify"):
            with gr.Row():
                label = gr.Label(num_top_classes=5, label="Top-5", elem_id="top5-label")
                bar = gr.Plot(label="Top-5 probabilities", elem_id="top5-bar")
            with gr.Row():
                # Columns with a minimum width: side by side on a desktop, stacked on a phone.
                with gr.Column(min_width=280):
                    summary = gr.Markdown(elem_id="classify-summary")
                with gr.Column(min_width=280):
                    view = gr.Image(label="As the model sees it", show_label=False, format="png", interactive=False,
                                    height=256, width=256, elem_id="model-view", buttons=["download"])
        return cls(label, bar, summary, view)

    def wire(self, h: Handlers, panel: InputPanel, state: BrowserState, spectra: SpectraTab,
             compare: CompareTab) -> None:
        """Browser chains (private) never raise after the first step, so an upload's problem
        shows as one toast; /classify keeps its documented signature."""
        image, model = panel.image, panel.model

        def then_views_and_spectra(dep, tag: str):
            """Bar + model view, then spectra: both reuse the cached forward pass (and clear
            themselves when the input was rejected, so no stale result stays on screen)."""
            return (
                dep.then(h.views_ui, [image, model], [self.bar, self.view, self.summary], api_name=f"_views_{tag}",
                         api_visibility="private")
                .then(h.spectra_ui, [*spectra.inputs(panel), state.viewport], [spectra.plot, spectra.features],
                      api_name=f"_spectra_{tag}", api_visibility="private")
            )

        button = panel.button.click(h.classify, [image, model], [self.label], api_name="classify")
        then_views_and_spectra(button, "button")
        button.failure(h.drop_rejected_input, [image, model], [image], api_name="_drop_button", api_visibility="private")

        image.change(None, [image], None, js=CLOSE_TOASTS_JS)  # an old error must not sit beside a new result
        auto = gr.on([image.change, model.change], h.classify_ui, [image, model], [self.label],
                     api_name="_classify_auto", api_visibility="private", trigger_mode="always_last")
        auto.success(None, None, None, js=SCROLL_TO_RESULTS_JS)
        auto.failure(h.drop_rejected_input, [image, model], [image], api_name="_drop_auto", api_visibility="private")
        then_views_and_spectra(auto, "auto").then(h.compare_auto, compare.auto_inputs(panel, state), compare.view(state),
                                                  api_name="_compare_after_image", api_visibility="private")


@dataclass
class SpectraTab:
    """Spectrum per stage with the learned crops, feature maps, and the layer table (/spectra)."""

    plot: gr.Plot
    show_features: gr.Checkbox
    channels: gr.Slider
    features: gr.Plot
    layers_table: gr.Dataframe
    api: gr.Button

    @classmethod
    def build(cls, h: Handlers, default: str | None) -> SpectraTab:
        with gr.Tab("Spectra", id="spectra"):
            gr.Markdown(SPECTRA_HELP, elem_classes=["dash-note"])
            plot = gr.Plot(label="Spectrum per stage, with each layer's learned crop", show_label=False,
                           elem_id="spectra-plot")
            with gr.Accordion("Spatial feature maps", open=False):
                with gr.Row():
                    show_features = gr.Checkbox(label="Show feature maps", value=False, elem_id="show-features")
                    channels = gr.Slider(0, 8, value=3, step=1, label="Channels per stage (besides the mean)")
                features = gr.Plot(label="Feature maps: channel mean and the most active channels",
                                   elem_id="feature-plot")
            gr.Markdown("Scroll the table sideways for all columns →", elem_classes=["scroll-note"])
            layers_table = gr.Dataframe(
                headers=LAYER_HEADERS, value=h.layer_table(default),
                label="Downsampling layers of the model (s: learned or fixed stride; effective "
                      "stride = input size / output size)",
                interactive=False, wrap=True, elem_id="layers-table", column_widths=TABLE_PX["layers"],
            )
            api = gr.Button(visible=False)  # /spectra for API callers
        return cls(plot, show_features, channels, features, layers_table, api)

    def inputs(self, panel: InputPanel) -> list:
        """What the spectra handlers take (the UI ones also take the viewport width)."""
        return [panel.image, panel.model, self.show_features, self.channels]

    def wire(self, h: Handlers, panel: InputPanel, state: BrowserState) -> None:
        panel.model.change(h.layer_table, [panel.model], [self.layers_table], api_name="_layers",
                           api_visibility="private")
        gr.on([self.show_features.change, self.channels.release], h.spectra_ui, [*self.inputs(panel), state.viewport],
              [self.plot, self.features], api_name="_spectra_options", api_visibility="private",
              trigger_mode="always_last")
        self.api.click(h.spectra, self.inputs(panel), [self.plot, self.features, self.layers_table],
                       api_name="spectra")


@dataclass
class CompareTab:
    """The same image through 2-4 models: labels, a table, strides and resolution (/compare)."""

    models: gr.Dropdown
    button: gr.Button
    status: gr.Markdown
    labels: list[gr.Label]
    table: gr.Dataframe
    strides: gr.Plot
    resolution: gr.Plot
    summary: gr.JSON
    api: gr.Button

    @classmethod
    def build(cls, service: DashboardService, choices: list[tuple[str, str]]) -> CompareTab:
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                models = gr.Dropdown(
                    choices=choices, value=_compare_default(service), multiselect=True, max_choices=MAX_COMPARE,
                    allow_custom_value=True, label=f"Models to compare (2–{MAX_COMPARE}, same dataset)", scale=4,
                    elem_id="compare-models",
                )
                button = gr.Button("Compare", variant="primary", scale=1, elem_id="compare-btn")
            status = gr.Markdown(elem_id="compare-status")
            with gr.Row():
                labels = [gr.Label(num_top_classes=3, visible=False, elem_id=f"compare-label-{i}", min_width=150)
                          for i in range(MAX_COMPARE)]
            gr.Markdown("Scroll the table sideways for all columns →", elem_classes=["scroll-note"])
            table = gr.Dataframe(
                headers=COMPARE_HEADERS, label="Side by side (training budget: epochs · training images)",
                interactive=False, wrap=True, elem_id="compare-table", column_widths=TABLE_PX["compare"],
            )
            with gr.Row():
                strides = gr.Plot(label="Strides per stage", elem_id="compare-strides")
                resolution = gr.Plot(label="Resolution per stage", elem_id="compare-resolution")
            summary = gr.JSON(visible=False, label="summary")
            # /compare for API callers; the browser uses the button and the tab.
            api = gr.Button(visible=False)
        return cls(models, button, status, labels, table, strides, resolution, summary, api)

    def view(self, state: BrowserState) -> list:
        """The outputs of the browser's compare handlers (and what they compared)."""
        return [self.status, self.table, self.strides, self.resolution, *self.labels, state.compare_shown]

    def auto_inputs(self, panel: InputPanel, state: BrowserState) -> list:
        """What compare_auto takes: it compares only while the tab is open and the view is stale."""
        return [panel.image, self.models, state.active_tab, state.compare_shown]

    def wire(self, h: Handlers, panel: InputPanel, state: BrowserState, tabs: gr.Tabs) -> None:
        self.button.click(h.compare_view, [panel.image, self.models], self.view(state),
                          api_name="_compare_button", api_visibility="private")
        self.models.change(h.compare_auto, self.auto_inputs(panel, state), self.view(state),
                           api_name="_compare_models", api_visibility="private", trigger_mode="always_last")
        tabs.select(None, None, None, js=RESIZE_PLOTS_JS)
        tabs.select(h.select_tab, [panel.image, self.models, state.compare_shown], [state.active_tab, *self.view(state)],
                    api_name="_tab", api_visibility="private", trigger_mode="always_last")
        self.api.click(h.compare, [panel.image, self.models], [self.summary, self.table, self.strides, self.resolution],
                       api_name="compare")


@dataclass
class TrainingTab:
    """Curves, stride trajectories, the reproduction table and the models overview (/training)."""

    models: gr.CheckboxGroup
    stride_model: gr.Dropdown
    curves: gr.Plot
    strides: gr.Plot
    reproduction: gr.Markdown
    overview: gr.Dataframe

    @classmethod
    def build(cls, service: DashboardService, choices: list[tuple[str, str]]) -> TrainingTab:
        with gr.Tab("Training", id="training"):
            with gr.Row():
                models = gr.CheckboxGroup(choices=choices, value=service.names(), label="Models", scale=3,
                                          elem_id="training-models")
                stride_model = gr.Dropdown(choices=choices, value=_stride_default(service),
                                           label="Stride trajectories of", scale=2, allow_custom_value=True)
            curves = gr.Plot(label="Accuracy and loss per epoch", elem_id="training-curves")
            with gr.Row():
                strides = gr.Plot(label="Learned strides per epoch", elem_id="training-strides")
            gr.Markdown("### Reproduction table (test accuracy from the model cards)")
            reproduction = gr.Markdown(elem_id="reproduction-table", label="reproduction table")
            gr.Markdown("Scroll the table sideways for all columns →", elem_classes=["scroll-note"])
            overview = gr.Dataframe(headers=OVERVIEW_HEADERS, label="Bundled models", interactive=False, wrap=True,
                                    elem_id="models-overview", max_height=900, column_widths=TABLE_PX["overview"])
        return cls(models, stride_model, curves, strides, reproduction, overview)

    def wire(self, demo: gr.Blocks, h: Handlers) -> None:
        inputs = [self.models, self.stride_model]
        outputs = [self.curves, self.strides, self.reproduction, self.overview]
        gr.on([self.models.change, self.stride_model.change], h.training, inputs, outputs, api_name="training",
              trigger_mode="always_last")
        demo.load(h.training, inputs, outputs, api_name="_training_load", api_visibility="private")


ROBUSTNESS_HELP = (
    "How the models behave when the image moves, is corrupted or loses frequencies. **Shift consistency**: how often "
    "the top class stays the same when the image is shifted by 1–8 px (circularly, or with black entering). "
    "**Corruptions**: CIFAR-10-C-style noise, blur, weather and digital corruptions at five severities. "
    "**Frequency**: accuracy when only the low (or only the high) frequencies within a radius are kept. "
    "Spectral downsampling crops in the Fourier domain instead of skipping pixels, which is expected to make a model "
    "move less under shifts; compare the models below (the second table pairs each with resnet18 image by image)."
)


@dataclass
class RobustnessTab:
    """Measured shift consistency, corruption and frequency robustness, and the per-upload probe
    (/robustness, /robustness_probe)."""

    models: gr.CheckboxGroup
    note: gr.Markdown
    table: gr.Dataframe
    paired: gr.Dataframe
    shift: gr.Plot
    frequency: gr.Plot
    corruption: gr.Dropdown
    corruption_plot: gr.Plot
    family: gr.Dropdown
    strip: gr.Image
    probe_plot: gr.Plot
    probe_table: gr.Dataframe
    api: gr.Button

    @classmethod
    def build(cls, service: DashboardService, choices: list[tuple[str, str]]) -> RobustnessTab:
        with gr.Tab("Robustness", id="robustness"):
            gr.Markdown(ROBUSTNESS_HELP, elem_classes=["dash-note"])
            models = gr.CheckboxGroup(choices=choices, value=service.names(), label="Models",
                                      elem_id="robustness-models")
            note = gr.Markdown(elem_id="robustness-note", elem_classes=["dash-note"])
            gr.Markdown("Scroll the table sideways for all columns →", elem_classes=["scroll-note"])
            table = gr.Dataframe(headers=SUMMARY_HEADERS, label="Measured on the test set (95 % intervals)",
                                 interactive=False, wrap=True, elem_id="robustness-table",
                                 column_widths=TABLE_PX["robustness"])
            paired = gr.Dataframe(headers=SUMMARY_HEADERS, label=PAIRED_LABEL, interactive=False, wrap=True,
                                  elem_id="robustness-paired", column_widths=TABLE_PX["robustness"])
            with gr.Row():
                shift = gr.Plot(label="Accuracy vs shift", elem_id="robustness-shift", min_width=300)
                frequency = gr.Plot(label="Accuracy vs filter radius", elem_id="robustness-frequency", min_width=300)
            corruption = gr.Dropdown(choices=[MEAN_OF_ALL, *CORRUPTIONS], value=MEAN_OF_ALL, label="Corruption",
                                     elem_id="robustness-corruption")
            corruption_plot = gr.Plot(label="Accuracy vs severity", elem_id="robustness-corruption-plot")
            gr.Markdown("### Your image, transformed step by step")
            family = gr.Dropdown(choices=list(FAMILIES), value=FAMILIES[0], label="Transform",
                                 elem_id="probe-family",
                                 info="Shifts move the image down and right by 0–8 px; filters keep frequencies "
                                      "by radius; corruptions go from clean to severity 5.")
            strip = gr.Image(label="The steps, as the models see them", format="png", interactive=False,
                             height=150, elem_id="probe-strip", buttons=["download"])
            probe_plot = gr.Plot(label="Confidence per step", elem_id="probe-plot")
            with gr.Accordion("Top class per step", open=False):
                probe_table = gr.Dataframe(headers=PROBE_HEADERS, interactive=False, wrap=True,
                                           elem_id="probe-table", column_widths=TABLE_PX["probe"])
            api = gr.Button(visible=False)  # /robustness_probe for API callers
        return cls(models, note, table, paired, shift, frequency, corruption, corruption_plot, family, strip, probe_plot,
                   probe_table, api)

    def wire(self, demo: gr.Blocks, h: Handlers, panel: InputPanel, state: BrowserState, tabs: gr.Tabs) -> None:
        inputs = [self.models, self.corruption]
        outputs = [self.note, self.table, self.paired, self.shift, self.frequency, self.corruption_plot]
        gr.on([self.models.change, self.corruption.change], h.robustness, inputs, outputs, api_name="robustness",
              trigger_mode="always_last")
        demo.load(h.robustness, inputs, outputs, api_name="_robustness_load", api_visibility="private")
        probe_out = [self.strip, self.probe_plot, self.probe_table]
        gr.on([panel.image.change, self.models.change, self.family.change], h.robustness_probe_ui,
              [panel.image, self.models, self.family, state.active_tab], probe_out, api_name="_probe_auto",
              api_visibility="private", trigger_mode="always_last")
        tabs.select(h.robustness_probe_tab, [panel.image, self.models, self.family], probe_out,
                    api_name="_probe_tab", api_visibility="private", trigger_mode="always_last")
        self.api.click(h.robustness_probe, [panel.image, self.models, self.family], probe_out,
                       api_name="robustness_probe")


def build_demo(service: DashboardService) -> gr.Blocks:
    examples = example_images()
    h = Handlers(service, examples)
    choices = _choices(service)
    default = service.default_name()

    # No delete_cache: app.py sweeps the uploads. Gradio's would also delete them all at
    # shutdown, racing the app's own clean-up (whose logged count then came out too low).
    with gr.Blocks(title="Spectral downsampling dashboard", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Learnable-stride spectral downsampling\n"
            "DiffStride and spectral-pooling ResNet-18 models on CIFAR, served with ONNX Runtime. "
            "Upload an image or pick an example, then look at what each model predicts, how it sees the image in "
            "frequency, and what strides it learned.",
            elem_id="dash-title",
        )
        gr.Markdown(_status_markdown(service), elem_id="dash-status")
        state = BrowserState.build()
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                panel = InputPanel.build(choices, default, examples)
            with gr.Column(scale=3):
                with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:
                    classify = ClassifyTab.build()
                    spectra = SpectraTab.build(h, default)
                    compare = CompareTab.build(service, choices)
                    training = TrainingTab.build(service, choices)
                    robustness = RobustnessTab.build(service, choices)

        demo.load(None, None, state.viewport, js=VIEWPORT_JS)
        classify.wire(h, panel, state, spectra, compare)
        spectra.wire(h, panel, state)
        compare.wire(h, panel, state, tabs)
        training.wire(demo, h)
        robustness.wire(demo, h, panel, state, tabs)
        gr.api(h.models, api_name="models")
    return demo
