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
* **Request bodies.** Only the upload route has a limit (``max_file_size``), and it applies
  per file, while the body streams to disk; every other route (``/call``, ``/queue/join``,
  ``/run``, ...) reads the whole body into memory first: one 210 MB JSON body with an inline
  data URL took the server from 292 MB to 1.3 GB. :class:`RequestLimits` bounds the body of
  every request while it streams in (HTTP 413 before anything is buffered, decoded or
  written) and how many large bodies are received at once (HTTP 503); it also answers the
  upload route's own 413 (Gradio's "File size exceeded maximum allowed size of 10485760
  bytes.") in the app's sentence, the one an inline data URL gets. Gradio's upload parser
  deletes its partial temporary file only on its own errors: a client that went away
  mid-upload left it in the upload folder for good (no sweep knows it); RequestLimits hands
  the parser such an error then.
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

from starlette.formparsers import MultiPartException

__all__ = ["lean_sessions", "sweep_uploads", "OneLineDisconnects", "RequestLimits", "bound_malloc_arenas",
           "trim_malloc"]

log = logging.getLogger("dashboard")


def lean_sessions() -> bool:
    """Install the lean ``SessionState`` (see the module docstring); ``False`` if this Gradio
    version does not have the expected structure (then nothing is changed)."""
    try:
        # version guard: Gradio internals that may move; a missing one returns False, not an import error
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


class BodyRefused(MultiPartException):
    """Raised to the app from ``receive`` when :class:`RequestLimits` refuses a body that is
    streaming in. A ``MultiPartException`` because Gradio's upload parser deletes its partial
    temporary files on exactly that (on any other exception they stay on disk)."""


class ClientGone(BodyRefused):
    """Raised to the app from ``receive`` when the client went away before the end of its
    body (instead of Starlette's ``ClientDisconnect``: the same clean-up as a refusal)."""


def _header(scope: dict, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", []) if key.lower() == name), None)


class RequestLimits:
    """ASGI middleware: a size limit on the body of every HTTP request, and a bound on how
    many large bodies are received at once. Pure ASGI: nothing is buffered here.

    * A ``Content-Length`` over the route's limit is answered with HTTP 413 and one sentence;
      the app never sees the request, and no byte of its body is kept (see below).
    * Otherwise the body is counted as the app reads it; the chunk that takes it over the
      limit (a body without ``Content-Length``) never reaches the app: the 413 is sent and the
      app's ``receive`` raises :class:`BodyRefused` (its own answer is dropped).
    * A body over ``large`` bytes (by ``Content-Length``, or once that much has streamed in)
      needs one of ``max_large`` slots until the request ends; without a free one it is
      answered HTTP 503 with ``busy`` and ``Retry-After``.
    * The upload route's own 413 (the per-file ``max_file_size`` in Gradio's multipart parser)
      is answered with ``upload_message(Content-Length)`` too.
    * A client that goes away before the end of its body: ``receive`` raises :class:`ClientGone`.

    A body refused by its ``Content-Length`` of at most ``drain`` bytes is read to its end and
    dropped (never held) before the answer: clients that send the whole body before they read
    (urllib, requests) get the answer rather than a reset connection. A larger one, one
    refused while streaming, and one whose client waits for ``100 Continue`` are answered at
    once with ``Connection: close``: clients that read while they send (curl, browsers) see it.

    Args:
        limit / upload_limit: body limits in bytes for every route / the upload route.
        upload_message / body_message: the 413 sentence for the upload route / the others,
            from the body's size in bytes (``None`` when it was sent without a length).
        upload_suffix: paths ending in this (with or without a final ``/``) are the upload route.
    """

    def __init__(self, app: Any, *, limit: int, upload_limit: int, upload_message: Callable[[int | None], str],
                 body_message: Callable[[int | None], str], busy: str, large: int = 2**20, max_large: int = 4,
                 drain: int = 64 * 2**20, upload_suffix: str = "/gradio_api/upload", retry_after_s: int = 2) -> None:
        self.app, self.limit, self.upload_limit = app, limit, upload_limit
        self.upload_message, self.body_message, self.busy = upload_message, body_message, busy
        self.large, self.max_large, self.drain = large, max_large, drain
        self.upload_suffix, self.retry_after_s = upload_suffix, retry_after_s
        self.large_in_flight = 0  # only touched on the event loop: no lock needed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("path", "").rstrip("/").endswith(self.upload_suffix)
        limit = self.upload_limit if upload else self.limit
        raw_length = _header(scope, b"content-length")
        length = int(raw_length) if raw_length is not None and raw_length.isdigit() else None
        drain = (length is not None and length <= self.drain
                 and (_header(scope, b"expect") or b"").lower() != b"100-continue")

        def too_large() -> str:
            return (self.upload_message if upload else self.body_message)(length)

        if length is not None and length > limit:
            await self._refuse(scope, receive if drain else None, send, 413, too_large())
            return
        holding = False
        if length is not None and length > self.large:
            if self.large_in_flight >= self.max_large:
                await self._refuse(scope, receive if drain else None, send, 503, self.busy)
                return
            self.large_in_flight += 1
            holding = True
        received, refused, answered, started, ended = 0, False, False, False, False

        async def limited_receive() -> dict:
            nonlocal received, refused, answered, holding, ended
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.disconnect" and not ended:
                refused = True
                raise ClientGone("the client went away before the end of its request body")
            if message.get("type") != "http.request":
                return message
            ended = not message.get("more_body", False)
            received += len(message.get("body", b""))
            status = sentence = None
            if received > limit:
                status, sentence = 413, too_large()
            elif received > self.large and not holding:
                if self.large_in_flight >= self.max_large:
                    status, sentence = 503, self.busy
                else:
                    self.large_in_flight += 1
                    holding = True
            if status is None:
                return message
            refused = True
            if not started:
                answered = True
                await self._refuse(scope, None, send, status, sentence)
            raise BodyRefused(sentence)

        async def checked_send(event: dict) -> None:
            nonlocal started, answered
            if answered:  # the app's own answer after ours (e.g. to BodyRefused) is dropped
                return
            if event["type"] == "http.response.start":
                started = True
                if upload and event.get("status") == 413:  # Gradio's per-file limit, in our words
                    answered = True
                    await self._answer(scope, send, 413, too_large(), close=False)
                    return
            await send(event)

        try:
            await self.app(scope, limited_receive, checked_send)
        except Exception:
            if not refused:
                raise
            # the app stopped reading at the refusal (or the client's leaving): no fault of its
        finally:
            if holding:
                self.large_in_flight -= 1

    async def _refuse(self, scope: dict, receive: Any, send: Any, status: int, sentence: str) -> None:
        """Answer ``status`` and ``sentence``: after reading the body to its end and dropping
        it, chunk by chunk, with ``receive``; at once and closing the connection without it."""
        if receive is not None:
            while True:
                message = await receive()
                if message.get("type") != "http.request" or not message.get("more_body", False):
                    break
        await self._answer(scope, send, status, sentence, close=receive is None)

    async def _answer(self, scope: dict, send: Any, status: int, sentence: str, close: bool) -> None:
        body = sentence.encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        if status == 503:
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        log.info("refused %s (%s, HTTP %d): %s", scope.get("path"), scope.get("method"), status, sentence)


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
