"""Dashboard for the exported models: ``python app.py [--host H] [--port P] [--models-dir D] [--share]``.

Tabs: Classify, Spectra, Compare, Training. API endpoints (``gradio_client``):
``/classify``, ``/spectra``, ``/compare``, ``/training``, ``/models``; see
``dashboard/README_section.md``.
"""
from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # closed network: no telemetry calls
# Gradio's queue rebuilds a pandas summary of the last GRADIO_ANALYTICS_MAX_EVENTS (10,000)
# events after *every* event, for the monitoring page this app does not enable: a cost per
# request that grows with uptime (~20-40 ms after a few thousand calls on 2 cores).
# Recompute it every 1000 events over at most 1000.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")

import gradio as gr  # noqa: E402

from dashboard import CSS, DashboardService, build_demo  # noqa: E402
from dashboard.layout import ASSETS_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parent
CONCURRENCY_LIMIT = 4  # per event; onnxruntime sessions are shared and thread-safe
MAX_FILE_SIZE = "10mb"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Spectral downsampling dashboard (Gradio).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "exports" / "models",
                        help="folder of exported models (default exports/models)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="create onnxruntime sessions on first use instead of in the background at start-up")
    return parser.parse_args(argv)


def create_app(models_dir: str | Path) -> tuple[gr.Blocks, DashboardService]:
    service = DashboardService(models_dir)
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=256)
    return demo, service


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo, service = create_app(args.models_dir)
    if args.preload:
        threading.Thread(target=service.preload, name="preload-models", daemon=True).start()
    logging.getLogger("dashboard").info(
        "models dir %s: %d model(s), %d skipped", args.models_dir, len(service.names()), len(service.skipped()))
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(ASSETS_DIR)],
        show_error=True,
        css=CSS,
        theme=gr.themes.Soft(),
        footer_links=["api"],
        run_history=False,  # no per-run recording of uploads (privacy, and less work per call)
    )


if __name__ == "__main__":
    main()
