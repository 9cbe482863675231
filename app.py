"""Dashboard for the exported models: ``python app.py [--host H] [--port P] [--models-dir D] [--share]
[--cache-mb MB] [--upload-dir DIR] [--upload-ttl-min MIN]``.

Tabs: Classify, Spectra, Compare, Training. API endpoints (``gradio_client`` or raw HTTP):
``/classify``, ``/spectra``, ``/compare``, ``/training``, ``/models``; see ``docs/api.md``.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path


def _stop_while_starting(signum: int, frame: object) -> None:
    """SIGTERM or Ctrl-C before the server starts (importing Gradio and onnxruntime and
    building the app take seconds): one line and exit 0; nothing was served, so no upload
    can exist yet. ``main`` hands both signals to Gradio's shutdown before it starts anything
    that must be stopped."""
    print(f"stopped while starting ({signal.Signals(signum).name}); nothing was served, no uploads to delete",
          file=sys.stderr, flush=True)
    sys.exit(0)


if __name__ == "__main__":  # not when tests import this module
    signal.signal(signal.SIGTERM, _stop_while_starting)
    signal.signal(signal.SIGINT, _stop_while_starting)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # closed network: no telemetry calls
# Gradio's queue rebuilds a pandas summary of the last GRADIO_ANALYTICS_MAX_EVENTS (10,000)
# events after *every* event, for the monitoring page this app does not enable: a cost per
# request that grows with uptime (~20-40 ms after a few thousand calls on 2 cores).
# Recompute it every 1000 events over at most 1000.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from dashboard import CSS, DashboardService, build_demo, errors, gradio_fixes  # noqa: E402
from dashboard.layout import EXAMPLES_DIR  # noqa: E402
from dashboard.service import DATA_URL_FOLDER, DEFAULT_CACHE_MB, MAX_UPLOAD_BYTES, too_large_message  # noqa: E402
from serving.paths import BUNDLED_MODELS_DIR  # noqa: E402

CONCURRENCY_LIMIT = 4  # per event; onnxruntime sessions are shared and thread-safe
SESSION_CAPACITY = 1000  # Gradio keeps this many sessions' state (its default: 10,000)
MAX_FILE_SIZE = MAX_UPLOAD_BYTES  # the upload route's limit (HTTP 413), the app's own as well
# Request bodies, checked while they stream in, before anything is buffered, decoded or
# written (gradio_fixes.RequestLimits: HTTP 413 with one sentence; see docs/api.md).
#: The upload route: one file of MAX_UPLOAD_BYTES and its multipart framing (boundaries and
#: part headers, a few hundred bytes; 64 KB leaves room for long file names).
MAX_UPLOAD_BODY = MAX_UPLOAD_BYTES + 64 * 2**10
#: Every other route (/call, /queue/join, /run, /api and whatever Gradio adds) takes JSON,
#: which may carry an image inline as a base64 data URL: 4/3 of the image's bytes, so a
#: 10 MB image is 13.3 MB of text. Rounded up to the next whole MB (14 MB), which leaves
#: 0.67 MB for the data URL's prefix, the JSON around it and the other inputs.
MAX_BODY = (MAX_UPLOAD_BYTES * 4 // 3 // 2**20 + 1) * 2**20
#: Bodies over LARGE_BODY (a real photo, not a CIFAR image or a JSON call with a file path)
#: are received at most MAX_LARGE_BODIES at a time; another is answered HTTP 503.
LARGE_BODY = 2**20
MAX_LARGE_BODIES = 4
#: Uploads older than this are deleted (minutes); sweeps run every quarter of it.
DEFAULT_UPLOAD_TTL_MIN = 30.0
log = logging.getLogger("dashboard")


def body_too_large_message(size: int | None) -> str:
    """The one sentence for a request body over :data:`MAX_BODY` (``size`` in bytes, if sent)."""
    limit = (f"the limit is {MAX_BODY // 2**20} MB, enough for one {MAX_UPLOAD_BYTES // 2**20} MB image "
             "sent inline as a data URL.")
    if size is None:
        return f"The request body is over the limit; {limit}"
    return f"The request body is {size / 2**20:.1f} MB; {limit}"


BUSY_MESSAGE = (f"The server is already receiving {MAX_LARGE_BODIES} large uploads, as many as it takes at once; "
                "try again in a few seconds.")


def request_limits() -> Middleware:
    """The body limits above, checked before Gradio's routes see a request."""
    return Middleware(gradio_fixes.RequestLimits, limit=MAX_BODY, upload_limit=MAX_UPLOAD_BODY,
                      upload_message=too_large_message, body_message=body_too_large_message, busy=BUSY_MESSAGE,
                      large=LARGE_BODY, max_large=MAX_LARGE_BODIES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Spectral downsampling dashboard (Gradio).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--models-dir", type=Path, default=BUNDLED_MODELS_DIR,
                        help="folder of exported models (default exports/models)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="create onnxruntime sessions on first use instead of in the background at start-up")
    parser.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_MB,
                        help=f"memory budget of the result caches in MB (default {DEFAULT_CACHE_MB})")
    parser.add_argument("--upload-dir", type=Path, default=None,
                        help="folder for uploads (default: Gradio's, $GRADIO_TEMP_DIR or <tmp>/gradio)")
    parser.add_argument("--upload-ttl-min", type=float, default=DEFAULT_UPLOAD_TTL_MIN,
                        help=f"delete uploads older than this many minutes (default {DEFAULT_UPLOAD_TTL_MIN:g})")
    args = parser.parse_args(argv)
    if args.cache_mb <= 0 or args.upload_ttl_min <= 0:
        parser.error("--cache-mb and --upload-ttl-min must be positive")
    return args


def port_problem(host: str, port: int) -> str | None:
    """Why the dashboard cannot listen on ``host:port``, in one sentence, or ``None``.

    Checked before Gradio starts: its own failure is a long traceback that ends in advice
    about ``GRADIO_SERVER_PORT`` and an abort. (Another program may still take the port in
    the moment between this check and the server's start; then Gradio's error stands.)
    """
    if not 1 <= port <= 65535:
        return f"--port {port} is not a TCP port (1-65535)"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        return f"--host {host} is not an address of this machine ({error.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as error:
            return f"cannot listen on {host}:{port} ({error.strerror}); start with another --port"
    return None


def upload_folder() -> Path:
    """The folder Gradio stores uploads in (``GRADIO_TEMP_DIR`` or ``<tmp>/gradio``)."""
    return Path(get_upload_folder()).resolve()


def create_app(models_dir: str | Path, cache_mb: float = DEFAULT_CACHE_MB) -> tuple[gr.Blocks, DashboardService]:
    gradio_fixes.lean_sessions()  # before any request: see dashboard/gradio_fixes.py
    service = DashboardService(models_dir, cache_mb=cache_mb, upload_dir=upload_folder())
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=256)
    # Uploads are swept by this app (main()), not by Blocks(delete_cache=...), whose task
    # dies under concurrent uploads (dashboard/gradio_fixes.py).

    def health_api() -> dict:
        """Cache bytes and budget, upload-folder files and bytes, server RSS (MB)."""
        return health(service)

    with demo:
        gr.api(health_api, api_name="health", queue=False)
    errors.install(demo)
    return demo, service


def _rss_mb() -> float | None:
    """Resident memory of this process (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def health(service: DashboardService) -> dict:
    """What the soak benchmark and the tests watch: memory and disk held by the server."""
    sizes = []
    for root, _, names in os.walk(upload_folder()):  # tolerant of files deleted meanwhile
        for name in names:
            try:
                sizes.append(os.stat(os.path.join(root, name)).st_size)
            except OSError:
                continue
    return {
        "cache_bytes": service.cache_bytes,
        "cache_budget_bytes": service.cache_budget,
        "upload_files": len(sizes),
        "upload_bytes": sum(sizes),
        "rss_mb": _rss_mb(),
    }


def sweep_data_urls(folder: Path, max_age_s: float | None) -> int:
    """Delete pasted/webcam images older than ``max_age_s`` (all for ``None``); Gradio does
    not track them, so its own sweep misses them. Returns how many were deleted."""
    deleted = 0
    now = time.time()
    for file in folder.glob("*") if folder.is_dir() else []:
        try:
            if max_age_s is None or now - file.stat().st_mtime > max_age_s:
                file.unlink()
                deleted += 1
        except OSError:
            continue
    return deleted


def sweep(demo: gr.Blocks, data_urls: Path, max_age_s: float | None) -> int:
    """Delete uploads older than ``max_age_s`` (all for ``None``): the files Gradio received
    (cached examples excluded) and the pasted images. Returns how many."""
    return gradio_fixes.sweep_uploads(demo, max_age_s) + sweep_data_urls(data_urls, max_age_s)


def _sweep_forever(demo: gr.Blocks, data_urls: Path, ttl_s: float, stop: threading.Event) -> None:
    """Every quarter TTL, the uploads older than the TTL."""
    while not stop.wait(max(1.0, ttl_s / 4)):
        try:
            sweep(demo, data_urls, ttl_s)
            gradio_fixes.trim_malloc()
        except Exception:  # noqa: BLE001 - the sweeper must outlive any one failure
            log.exception("upload sweep failed; retrying at the next interval")


def _stop_on_sigterm() -> None:
    """SIGTERM (service managers, ``kill``) shuts down like Ctrl-C: Gradio closes the server
    and runs its shutdown clean-up instead of the process dying with uploads on disk (the
    same mechanism as ``training.train.stop_on_sigterm``, which this torch-free module cannot import).
    Ctrl-C gets Python's own handler back (``_stop_while_starting`` held it during start-up)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def log_models(service: DashboardService) -> None:
    """Say at start-up what will be served; with no valid model, why (as a warning: the
    server still starts and shows the same message on every tab)."""
    log.info("models dir %s: %d model(s), %d skipped", service.models_dir, len(service.names()), len(service.skipped()))
    if not service.names():
        log.warning("%s", service.no_models_message())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    problem = port_problem(args.host, args.port)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    gradio_fixes.bound_malloc_arenas()  # before the server's threads exist
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Gradio self-check request otherwise
    logging.getLogger("uvicorn.error").addFilter(gradio_fixes.OneLineDisconnects())
    if args.upload_dir is not None:
        args.upload_dir.mkdir(parents=True, exist_ok=True)
        os.environ["GRADIO_TEMP_DIR"] = str(args.upload_dir.resolve())  # read when the Blocks are built
    demo, service = create_app(args.models_dir, args.cache_mb)
    data_urls = upload_folder() / DATA_URL_FOLDER
    stop = threading.Event()
    threading.Thread(target=_sweep_forever, args=(demo, data_urls, args.upload_ttl_min * 60, stop),
                     name="sweep-uploads", daemon=True).start()
    preload = threading.Thread(target=service.preload, args=(stop,), name="preload-models", daemon=True)
    _stop_on_sigterm()  # from here on a stop runs the clean-up below (the preload must be joined)
    try:
        if args.preload:
            preload.start()
        log_models(service)
        _launch(demo, args)
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C during start-up, before Gradio's own handler
        demo.close()
    # launch() returns once the server has stopped (Ctrl-C or SIGTERM): delete every upload.
    stop.set()
    if preload.is_alive():
        # onnxruntime aborts the process ("terminate called ...") if the interpreter exits
        # while a daemon thread is inside its session constructor.
        preload.join()
    log.info("shut down; deleted %d upload(s) from %s", sweep(demo, data_urls, None), upload_folder())


def _launch(demo: gr.Blocks, args: argparse.Namespace) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=MAX_FILE_SIZE,
        # every request body limited as it streams in; the upload route's 413 in the app's sentence
        app_kwargs={"middleware": [request_limits()]},
        allowed_paths=[str(EXAMPLES_DIR)],
        show_error=True,
        css=CSS,
        theme=gr.themes.Soft(),
        footer_links=["api"],
        run_history=False,  # no per-run recording of uploads (privacy, and less work per call)
        state_session_capacity=SESSION_CAPACITY,
    )


if __name__ == "__main__":
    main()
