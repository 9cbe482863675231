"""Plotly figures of the dashboard.

The figures drawn on every upload (top-5 bar, spectra grid, feature maps) are written as
plain Plotly JSON dictionaries: building them through ``plotly.graph_objects`` and
``make_subplots`` costs ~70 ms for the spectra grid (validation of every property), more
than the whole model run. :func:`plot_data` hands the JSON straight to ``gr.Plot``. The
rarely redrawn figures (compare, training) use ``plotly.graph_objects``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
import plotly.graph_objects as go
from gradio.components.plot import PlotData

__all__ = [
    "SpectrumPanel",
    "CropBox",
    "plot_data",
    "message_figure",
    "topk_figure",
    "spectra_figure",
    "spectra_columns",
    "feature_maps_figure",
    "strides_figure",
    "resolution_figure",
]

FONT = {"family": "Inter, Arial, sans-serif", "size": 12}
BOX_COLOUR = "#ff2d55"
RAMP_FILL = "rgba(255, 170, 0, 0.35)"
MIN_PANEL_PX = 215  # narrowest spectrum panel whose title and labels fit (px)
DASHES = ("solid", "dash", "dot", "dashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def plot_data(figure: dict | go.Figure) -> PlotData:
    """A figure (JSON dict, numpy arrays allowed, or ``go.Figure``) as the value ``gr.Plot``
    sends to the browser."""
    if isinstance(figure, go.Figure):
        return PlotData(type="plotly", plot=figure.to_json())
    return PlotData(type="plotly", plot=orjson.dumps(figure, option=orjson.OPT_SERIALIZE_NUMPY).decode())


def message_figure(text: str, height: int = 240) -> dict:
    """An empty figure that shows one sentence (placeholders, 'no model' states)."""
    return {
        "data": [],
        "layout": {
            "height": height,
            "font": FONT,
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [
                {"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                 "font": {"size": 14, "color": "#666"}}
            ],
            "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
            "plot_bgcolor": "rgba(0,0,0,0)",
            "paper_bgcolor": "rgba(0,0,0,0)",
        },
    }


def topk_figure(topk: Sequence[tuple[str, float]], title: str = "") -> dict:
    """Horizontal bars of the top-k class probabilities, the most likely on top."""
    classes = [c for c, _ in topk][::-1]
    probs = [round(100.0 * float(p), 2) for _, p in topk][::-1]
    colours = ["#9bb7d4"] * (len(probs) - 1) + ["#1f5fa8"] if probs else []
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "x": probs,
                "y": classes,
                "marker": {"color": colours},
                "text": [f"{p:.1f}%" for p in probs],
                "textposition": "auto",
                "hovertemplate": "%{y}: %{x:.2f}%<extra></extra>",
            }
        ],
        "layout": {
            "title": {"text": title, "font": {"size": 13}} if title else None,
            "height": 270,
            "font": FONT,
            "margin": {"l": 90, "r": 20, "t": 44, "b": 40},
            "xaxis": {"title": {"text": "probability (%)"}, "range": [0, 100], "fixedrange": True},
            "yaxis": {"fixedrange": True, "automargin": True},
            "bargap": 0.25,
        },
    }


# --------------------------------------------------------------------------------------
# Spectra grid
# --------------------------------------------------------------------------------------
@dataclass
class CropBox:
    """One downsampling layer's crop, drawn on the spectrum of the map it downsamples.

    ``pass_h``/``pass_w``: mask 1 for ``|f| <= pass``; ``cut_h``/``cut_w``: mask 0 from there
    (the ramp band lies between); all in frequency bins of the drawn map.
    """

    layer: str
    kind: str
    stride: tuple[float, float]
    pass_h: float
    pass_w: float
    cut_h: float
    cut_w: float
    out_size: tuple[int, int]
    in_size: tuple[int, int] | None = None  # the drawn map's size; set by spectra_figure

    @property
    def has_ramp(self) -> bool:
        return self.cut_h > self.pass_h + 1e-6 or self.cut_w > self.pass_w + 1e-6

    @property
    def label(self) -> str:
        """Learned (or fixed) stride, output size and the *effective* stride (in/out size).

        The DiffStride ramp keeps extra bins beyond the pass band (size/S) so that S gets a
        gradient; the output is therefore larger than size/S and the effective stride is
        below the learned S (32→26 with S≈2 is an effective stride of 1.23).
        """
        sh, sw = self.stride
        kind = "learned s" if self.kind == "diffstride" else "s"
        # Two short lines: the label must fit inside a 150-px panel.
        text = f"{kind}=({sh:.2f}, {sw:.2f})<br>→ {self.out_size[0]}×{self.out_size[1]}"
        if self.in_size is not None:
            eh, ew = (self.in_size[0] / self.out_size[0], self.in_size[1] / self.out_size[1])
            eff = f"{eh:.2f}" if abs(eh - ew) < 5e-3 else f"({eh:.2f}, {ew:.2f})"
            text += f", effective {eff}"
        return text


@dataclass
class SpectrumPanel:
    """One subplot: the centred log-magnitude spectrum of one map (zero frequency at (h//2, w//2))."""

    key: str
    title: str
    spectrum: np.ndarray
    box: CropBox | None = None


def _grid(n: int) -> tuple[int, int]:
    cols = {1: 1, 2: 2, 3: 3, 4: 4, 5: 3, 6: 3, 7: 4, 8: 4}.get(n, 4)
    return math.ceil(n / cols), cols


def _freqs(n: int) -> list[int]:
    return list(range(-(n // 2), n - n // 2))


def _clip(value: float, limit: float) -> float:
    return float(max(-limit, min(limit, value)))


def _rect_path(x: float, y: float, lim_x: float, lim_y: float) -> str:
    x0, x1 = _clip(-x, lim_x), _clip(x, lim_x)
    y0, y1 = _clip(-y, lim_y), _clip(y, lim_y)
    return f"M{x0},{y0}H{x1}V{y1}H{x0}Z"


def _wrap_title(title: str, limit: int = 28) -> str:
    """Break long title lines before their bracket ("▭ crop of stem (on stem-conv map, 32×32)"),
    so a title is never wider than its panel at the narrowest panel width."""
    lines = []
    for line in title.split("<br>"):
        visible = re.sub(r"<[^>]+>", "", line)
        if len(visible) > limit and " (" in line:
            head, _, tail = line.partition(" (")
            lines.extend([head, "(" + tail])
        else:
            lines.append(line)
    return "<br>".join(lines)


def spectra_columns(viewport_px: float | None, n: int) -> int:
    """Grid columns for ``n`` spectrum panels in a browser window ``viewport_px`` wide: as
    many as fit at :data:`MIN_PANEL_PX` each (so titles and labels never overlap), at most
    the desktop grid's; ``None`` (API callers): the desktop grid."""
    desktop = _grid(n)[1]
    if not viewport_px or viewport_px <= 0:
        return desktop
    # The plot gets about 72% of a wide window (input column beside it), all of a phone's.
    usable = float(viewport_px) * (0.72 if viewport_px >= 1000 else 1.0) - 120
    return int(max(1, min(desktop, usable // MIN_PANEL_PX)))


def _spectrum_heatmap(panel: SpectrumPanel, spec: np.ndarray, xref: str, yref: str) -> dict:
    h, w = spec.shape
    return {
        "type": "heatmap",
        "z": np.round(spec, 2),
        "x": _freqs(w),
        "y": _freqs(h),
        "xaxis": xref,
        "yaxis": yref,
        "coloraxis": "coloraxis",
        "hovertemplate": "f_h=%{y}, f_w=%{x}<br>log(1+|F|)=%{z:.2f}<extra>" + panel.key + "</extra>",
    }


def _frequency_axes(shape: tuple[int, int], x_dom: list[float], y_dom: list[float], xref: str,
                    yref: str) -> tuple[dict, dict]:
    """The (x, y) axes of one panel: frequency bins centred on 0, square cells."""
    h, w = shape
    common = {"tickfont": {"size": 9}, "showgrid": False, "zeroline": False, "constrain": "domain"}
    x_axis = {"domain": x_dom, "anchor": yref, "range": [-(w // 2) - 0.5, w - w // 2 - 0.5],
              "title": {"text": "f_w (bins)", "font": {"size": 10}, "standoff": 2}, **common}
    y_axis = {"domain": y_dom, "anchor": xref, "range": [-(h // 2) - 0.5, h - h // 2 - 0.5],
              "title": {"text": "f_h", "font": {"size": 10}, "standoff": 2}, "scaleanchor": xref, **common}
    return x_axis, y_axis


def _crop_overlay(panel: SpectrumPanel, shape: tuple[int, int], xref: str, yref: str) -> tuple[list[dict], dict]:
    """A layer's crop drawn on the map it reads: the shaded ramp band (DiffStride only), the
    pass box, and the label (learned stride, output size, effective stride)."""
    h, w = shape
    lim_x, lim_y = w / 2 + 0.5, h / 2 + 0.5
    box = replace(panel.box, in_size=(h, w))
    shapes = []
    if box.has_ramp:
        outer = _rect_path(box.cut_w, box.cut_h, lim_x, lim_y)
        inner = _rect_path(box.pass_w, box.pass_h, lim_x, lim_y)
        shapes.append(
            {"type": "path", "path": outer + inner, "fillrule": "evenodd", "xref": xref, "yref": yref,
             "fillcolor": RAMP_FILL, "line": {"width": 1, "color": "rgba(255,170,0,0.9)", "dash": "dot"},
             "name": f"ramp:{box.layer}", "layer": "above"}
        )
    shapes.append(
        {"type": "path", "path": _rect_path(box.pass_w, box.pass_h, lim_x, lim_y), "xref": xref, "yref": yref,
         "line": {"width": 2.5, "color": BOX_COLOUR}, "fillcolor": "rgba(0,0,0,0)",
         "name": f"crop:{box.layer}", "layer": "above"}
    )
    label = {"text": box.label, "showarrow": False, "xref": f"{xref} domain", "yref": f"{yref} domain",
             "x": 0.02, "y": 0.02, "xanchor": "left", "yanchor": "bottom", "align": "left",
             "font": {"size": 10, "color": "white"}, "bgcolor": "rgba(0,0,0,0.6)", "borderpad": 2,
             "name": f"label:{panel.key}"}
    return shapes, label


def spectra_figure(panels: Sequence[SpectrumPanel], panel_px: int | None = None, cols: int | None = None) -> dict:
    """A grid of spectrum heatmaps, one per map, with each layer's crop box and ramp band.

    All panels share one colour scale (one colour bar), so brightness compares across
    stages. The pass box (``|f_h| <= pass_h``, ``|f_w| <= pass_w``) is a solid outline; the
    ramp band (mask falling to 0 at ``cut``) is shaded; the part of the spectrum outside it
    is what the layer removes. ``cols``: grid columns (default: up to 4); ``panel_px``: row
    height of a panel (default: about the width a panel gets with that many columns, so
    the square heatmaps leave no empty band).
    """
    n = len(panels)
    if n == 0:
        return message_figure("No feature maps to show.")
    cols = max(1, min(int(cols or _grid(n)[1]), n))
    rows = math.ceil(n / cols)
    panel_px = int(panel_px or {1: 280, 2: 250, 3: 210}.get(cols, 175))
    # Vertical layout in pixels: each row is a 2-line title, the square panel, the x-axis title.
    title_px, axis_px, top_px, bottom_px = 48, 44, 10, 10  # title: up to 3 lines
    plot_px = rows * (title_px + panel_px + axis_px)
    gap_x = 0.08 if cols > 1 else 0.0
    width = (1.0 - gap_x * (cols - 1)) / cols
    spectra = [np.asarray(p.spectrum, dtype=np.float32) for p in panels]
    zmin = float(min(s.min() for s in spectra))
    zmax = float(max(s.max() for s in spectra))
    data: list[dict] = []
    shapes: list[dict] = []
    annotations: list[dict] = []
    layout: dict[str, Any] = {}
    for index, (panel, spec) in enumerate(zip(panels, spectra)):
        r, c = divmod(index, cols)
        axis = "" if index == 0 else str(index + 1)
        xref, yref = f"x{axis}", f"y{axis}"
        x_dom = [c * (width + gap_x), c * (width + gap_x) + width]
        row_top = 1.0 - r * (title_px + panel_px + axis_px) / plot_px
        y_dom = [row_top - (title_px + panel_px) / plot_px, row_top - title_px / plot_px]
        data.append(_spectrum_heatmap(panel, spec, xref, yref))
        layout[f"xaxis{axis}"], layout[f"yaxis{axis}"] = _frequency_axes(spec.shape, x_dom, y_dom, xref, yref)
        annotations.append(
            {"text": _wrap_title(panel.title), "showarrow": False, "xref": "paper", "yref": "paper",
             "x": (x_dom[0] + x_dom[1]) / 2, "y": y_dom[1] + 2 / plot_px, "xanchor": "center", "yanchor": "bottom",
             "font": {"size": 11}, "align": "center", "name": f"title:{panel.key}"}
        )
        if panel.box is not None:
            box_shapes, label = _crop_overlay(panel, spec.shape, xref, yref)
            shapes += box_shapes
            annotations.append(label)
    layout.update(
        {
            "height": int(plot_px + top_px + bottom_px),
            "font": FONT,
            "margin": {"l": 40, "r": 70, "t": top_px, "b": bottom_px},
            "shapes": shapes,
            "annotations": annotations,
            "showlegend": False,
            "plot_bgcolor": "white",
            "coloraxis": {
                "colorscale": "Viridis", "cmin": round(zmin, 2), "cmax": round(zmax, 2),
                "colorbar": {"title": {"text": "log(1+|F|)", "side": "right", "font": {"size": 10}},
                             "thickness": 12, "len": min(1.0, 600 / plot_px), "y": 1.0, "yanchor": "top",
                             "tickfont": {"size": 9}},
            },
        }
    )
    return {"data": data, "layout": layout}


# --------------------------------------------------------------------------------------
# Feature maps
# --------------------------------------------------------------------------------------
def feature_maps_figure(features: dict[str, np.ndarray], channels: int = 3, panel_px: int = 120) -> dict:
    """Per stage: the channel mean and the ``channels`` most active channels (largest spatial
    variance), as image heatmaps (bright = high)."""
    stages = list(features)
    if not stages:
        return message_figure("No feature maps to show.")
    cols = 1 + max(0, int(channels))
    rows = len(stages)
    gap_x, gap_y = 0.02, 0.12 / max(rows, 1)
    width = (1.0 - gap_x * (cols - 1)) / cols
    height = (1.0 - gap_y * (rows - 1)) / rows
    data, annotations, layout = [], [], {}
    for r, stage in enumerate(stages):
        fmap = np.asarray(features[stage], dtype=np.float32)
        # The most active channels (largest spatial variance) say more than the first ones.
        order = np.argsort(-fmap.reshape(fmap.shape[0], -1).var(axis=1), kind="stable")[: cols - 1]
        maps = [("mean", fmap.mean(axis=0))] + [(f"ch {int(k)}", fmap[k]) for k in order]
        for c, (name, image) in enumerate(maps):
            index = r * cols + c
            axis = "" if index == 0 else str(index + 1)
            x_dom = [c * (width + gap_x), c * (width + gap_x) + width]
            y_top = 1.0 - r * (height + gap_y)
            y_dom = [y_top - height, y_top]
            data.append(
                {"type": "heatmap", "z": np.round(image, 3), "xaxis": f"x{axis}", "yaxis": f"y{axis}",
                 "colorscale": "Greys", "reversescale": True, "showscale": False,
                 "hovertemplate": f"{stage} {name}" + " (%{y}, %{x}): %{z:.3f}<extra></extra>"}
            )
            layout[f"xaxis{axis}"] = {"domain": x_dom, "anchor": f"y{axis}", "visible": False, "constrain": "domain"}
            layout[f"yaxis{axis}"] = {"domain": y_dom, "anchor": f"x{axis}", "visible": False, "autorange": "reversed",
                                      "scaleanchor": f"x{axis}", "constrain": "domain"}
            label = f"{stage} · {fmap.shape[1]}×{fmap.shape[2]} · {name}" if c == 0 else name
            annotations.append(
                {"text": label, "showarrow": False, "xref": "paper", "yref": "paper", "x": (x_dom[0] + x_dom[1]) / 2,
                 "y": y_dom[1], "xanchor": "center", "yanchor": "bottom", "font": {"size": 10}}
            )
    layout.update({"height": int(rows * (panel_px + 24) + 60), "font": FONT, "annotations": annotations,
                   "margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "showlegend": False})
    return {"data": data, "layout": layout}


# --------------------------------------------------------------------------------------
# Compare tab
# --------------------------------------------------------------------------------------
def strides_figure(strides: dict[str, dict[str, tuple[float, float]]], stages: Sequence[str]) -> go.Figure:
    """Grouped bars: per stage (x), two bars per model: its stride along height (solid) and
    width (hatched). strides: ``{model: {stage: (s_h, s_w)}}``; stages without a
    downsampling layer count as 1.
    """
    fig = go.Figure()
    for index, (model, per_stage) in enumerate(strides.items()):
        colour = PALETTE[index % len(PALETTE)]
        for axis, pattern in ((0, ""), (1, "/")):
            name = "s_h" if axis == 0 else "s_w"
            values = [float(per_stage.get(s, (1.0, 1.0))[axis]) for s in stages]
            fig.add_bar(
                x=list(stages), y=values, name=model, showlegend=axis == 0,
                marker={"color": colour, "pattern": {"shape": pattern, "fgcolor": "white", "solidity": 0.3}},
                offsetgroup=f"{model}-{axis}", legendgroup=model,
                hovertemplate=f"{model}<br>%{{x}}: {name}=%{{y:.3f}}<extra></extra>",
            )
    fig.update_layout(
        barmode="group", height=360, font=FONT, margin={"l": 50, "r": 10, "t": 60, "b": 40},
        yaxis={"title": "stride", "rangemode": "tozero"}, bargap=0.25, bargroupgap=0.05,
        title={"text": "Stride per stage (solid: height, hatched: width; 1 = no downsampling)", "font": {"size": 12}},
        legend={"orientation": "h", "y": -0.15}, template="plotly_white",
    )
    return fig


def resolution_figure(sizes: dict[str, dict[str, tuple[int, int]]], stages: Sequence[str]) -> go.Figure:
    """Spatial size (height×width) of each stage's output map, one line per model.

    Models with the same sizes would draw on top of each other: each line has its own dash
    and marker and is nudged sideways a little; the sizes themselves are in the hover (and
    in the Compare table), not printed beside the points where they would collide.
    """
    fig = go.Figure()
    n = max(1, len(sizes))
    for index, (model, per_stage) in enumerate(sizes.items()):
        present = [s for s in stages if s in per_stage]
        nudge = (index - (n - 1) / 2) * 0.07
        fig.add_scatter(
            x=[list(stages).index(s) + nudge for s in present],
            y=[per_stage[s][0] * per_stage[s][1] for s in present], mode="lines+markers",
            name=model, line={"color": PALETTE[index % len(PALETTE)], "dash": DASHES[index % len(DASHES)], "width": 2},
            marker={"symbol": SYMBOLS[index % len(SYMBOLS)], "size": 9},
            text=[f"{s}: {per_stage[s][0]}×{per_stage[s][1]}" for s in present],
            hovertemplate=f"{model}<br>%{{text}}<extra></extra>",
        )
    fig.update_layout(
        height=360, font=FONT, margin={"l": 60, "r": 20, "t": 60, "b": 40},
        title={"text": "Output size per stage (h × w pixels, log scale; hover for sizes)", "font": {"size": 12}},
        yaxis={"type": "log", "title": "pixels per channel"},
        xaxis={"tickmode": "array", "tickvals": list(range(len(stages))), "ticktext": list(stages),
               "range": [-0.5, len(stages) - 0.5]},
        legend={"orientation": "h", "y": -0.15}, template="plotly_white",
    )
    return fig
