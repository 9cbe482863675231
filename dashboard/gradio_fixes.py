"""Work-arounds for Gradio internals on the request path (measured with Gradio 6.31).

* **Sessions.** Every new session (a raw ``/gradio_api/call`` request is one; so is each
  gradio_client ``Client``) builds a ``SessionState`` whose ``config_values`` holds the
  config of *every* component (about 45 ms of CPU per session for this app under a
  profiler), and each request then stores its input values there, a 12 MB data URL
  included, for up to 10,000 sessions: the soak benchmark saw the server grow from 0.7 to
  2.4 GB. ``config_values`` only serves deep links (``gr.DeepLinkButton``), which this app
  does not use: :func:`lean_sessions` makes it lazy and stops storing input values in it.
* **Upload sweeps.** Gradio's scheduled ``delete_cache`` task iterates the set of uploaded
  files in a worker thread while the event loop adds to it; under concurrent uploads it dies
  with "Set changed size during iteration" and never runs again. :func:`sweep_uploads`
  does the same work on a snapshot of the set (the app runs it on its own schedule).
* **Memory returned to the system.** glibc gives each thread that allocates its own malloc
  arena and keeps freed memory in them; with Gradio's and onnxruntime's thread pools and
  large request bodies (a 12 MB image as a data URL is a 16 MB JSON string) the soak saw RSS
  climb by 600 MB over 2,000 calls. :func:`bound_malloc_arenas` caps the arenas at 2
  (what ``MALLOC_ARENA_MAX=2`` does: +260 MB over the same soak) and :func:`trim_malloc`
  hands free memory back (the app calls it after each upload sweep).
* **The upload limit's message.** The upload route refuses a file over ``max_file_size``
  with HTTP 413 and Gradio's "File size exceeded maximum allowed size of 10485760 bytes.";
  :class:`UploadLimitMessage` says it in the app's own sentence (the one a data URL gets).
* **Client disconnects.** A client that drops mid-upload (e.g. after an over-limit upload
  is refused) makes uvicorn log a full traceback; :class:`OneLineDisconnects` shortens that
  to one line.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["lean_sessions", "sweep_uploads", "OneLineDisconnects", "UploadLimitMessage", "bound_malloc_arenas",
           "trim_malloc"]

log = logging.getLogger("dashboard")


def lean_sessions() -> bool:
    """Install the lean ``SessionState`` (see the module docstring); ``False`` if this Gradio
    version does not have the expected structure (then nothing is changed)."""
    try:
        from gradio import blocks, route_utils, state_holder
    except ImportError:
        return False
    original = state_holder.SessionState
    if getattr(original, "_dashboard_lean", False):
        return True
    if not all(hasattr(original, name) for name in ("_update_value_in_config", "_update_config", "components")):
        log.warning("Gradio's SessionState changed; per-session config copies are left as they are")
        return False

    class _NoComponents:
        """``blocks`` as SessionState.__init__ sees it, with no components to copy configs of."""

        def __init__(self, real: Any) -> None:
            self._real = real
            self.blocks: dict = {}

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

    class LeanSessionState(original):  # type: ignore[valid-type, misc]
        _dashboard_lean = True

        def __init__(self, blocks_: Any) -> None:
            super().__init__(_NoComponents(blocks_))

        def _update_value_in_config(self, key: int, value: Any) -> None:  # deep links only
            return None

        def _update_config(self, key: int) -> None:  # deep links only
            return None

    for module in (state_holder, blocks, route_utils):
        if getattr(module, "SessionState", None) is original:
            module.SessionState = LeanSessionState
    return True


def sweep_uploads(demo: Any, max_age_s: float | None) -> int:
    """Delete the files Gradio received for ``demo`` (uploads; cached examples excluded)
    that are older than ``max_age_s`` seconds, all of them for ``None``. Returns how many."""
    keep: set = set()
    for block in demo.blocks.values():
        keep.update(getattr(block, "keep_in_cache", set()))
    now, deleted = time.time(), 0
    for file_set in list(demo.temp_file_sets):
        for file in list(file_set):  # a snapshot: the event loop adds files meanwhile
            if file in keep:
                continue
            try:
                if max_age_s is None or now - os.lstat(file).st_ctime > max_age_s:
                    os.remove(file)
                    deleted += 1
                else:
                    continue
            except FileNotFoundError:
                pass
            except OSError:
                continue
            file_set.discard(file)
    return deleted


class OneLineDisconnects(logging.Filter):
    """Log a client disconnect during a request as one line instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and type(record.exc_info[1]).__name__ == "ClientDisconnect":
            record.msg, record.args, record.exc_info, record.exc_text = (
                "client disconnected before its request was read (e.g. an upload refused as too large)", (), None, None)
        return True


class UploadLimitMessage:
    """ASGI middleware: the upload route's HTTP 413 carries ``message(request bytes)``, one
    sentence of plain text, instead of Gradio's. Everything else passes through untouched.

    The request's ``Content-Length`` stands for the file's size (the multipart framing adds a
    few hundred bytes); ``None`` when the client did not send one.
    """

    def __init__(self, app: Any, message: Callable[[int | None], str]) -> None:
        self.app, self.message = app, message

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith("/upload"):
            await self.app(scope, receive, send)
            return
        length = next((int(value) for key, value in scope.get("headers", [])
                       if key.lower() == b"content-length" and value.isdigit()), None)
        replaced = False

        async def send_in_our_words(event: dict) -> None:
            nonlocal replaced
            if event["type"] == "http.response.start" and event.get("status") == 413:
                replaced = True
                body = self.message(length).encode()
                headers = [(k, v) for k, v in event.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
                headers += [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
                await send({**event, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            elif not (replaced and event["type"] == "http.response.body"):  # Gradio's own body is dropped
                await send(event)

        await self.app(scope, receive, send_in_our_words)


_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _libc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl or no libc found: nothing to tune
        return None


def bound_malloc_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` malloc arenas for threads created from now on (glibc only)."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, int(arenas)) == 1)


def trim_malloc() -> None:
    """Give freed heap memory back to the system (glibc only; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
