"""Request body limits (issue 23, item 1): every route refuses an oversized body while it
streams in, with HTTP 413 and one sentence, before anything is buffered, decoded or written;
large bodies are received a few at a time (HTTP 503 beyond).

Unit tests of ``dashboard.gradio_fixes.RequestLimits`` with a fake ASGI app, then a real
server (``app.py``, its own upload folder) that gets 16 concurrent 200 MB bodies per route,
with and without ``Content-Length``, and must stay within 100 MB of its peak memory, write
nothing and go on answering.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks.soak import stream_body
from conftest import data_url, files_in, raw_call
from dashboard.gradio_fixes import BodyRefused, ClientGone, RequestLimits

MB = 2**20


# --------------------------------------------------------------------------------------
# The middleware with a fake app
# --------------------------------------------------------------------------------------
def upload_message(size: int | None) -> str:
    return f"upload of {size} bytes is too large."


def body_message(size: int | None) -> str:
    return f"body of {size} bytes is too large."


BUSY = "busy, try again."


def limits(app, **overrides) -> RequestLimits:
    options = dict(limit=1000, upload_limit=500, upload_message=upload_message, body_message=body_message, busy=BUSY,
                   large=300, max_large=1, drain=5000)
    return RequestLimits(app, **{**options, **overrides})


def scope(path: str = "/gradio_api/call/classify", length: int | None = None, expect: bool = False) -> dict:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if expect:
        headers.append((b"expect", b"100-continue"))
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


class FakeApp:
    """Reads the whole body (as Starlette's ``request.body()`` does), records what it got,
    then answers 200 with the byte count; ``status`` overrides its answer's status. A request
    whose scope has ``"hold"`` waits for ``hold`` before answering."""

    def __init__(self, status: int = 200, hold: asyncio.Event | None = None) -> None:
        self.status, self.hold = status, hold
        self.messages: list[dict] = []
        self.raised: BaseException | None = None
        self.called = False

    async def __call__(self, scope, receive, send):
        self.called = True
        self.messages = messages = []
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        except BodyRefused as error:
            self.raised = error
            await send({"type": "http.response.start", "status": 400, "headers": []})  # dropped by the middleware
            await send({"type": "http.response.body", "body": b"the app's own answer"})
            raise
        if scope.get("hold"):
            await self.hold.wait()
        body = str(sum(len(m.get("body", b"")) for m in messages)).encode()
        await send({"type": "http.response.start", "status": self.status, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def chunks(*sizes: int) -> list[dict]:
    return [{"type": "http.request", "body": b"x" * n, "more_body": i < len(sizes) - 1} for i, n in enumerate(sizes)]


async def exchange(middleware, scope_: dict, messages: list[dict]) -> tuple[list[dict], int]:
    """Run one request through ``middleware``: ``(events sent, messages the server handed out)``."""
    sent, handed = [], 0

    async def receive():
        nonlocal handed
        if handed < len(messages):
            handed += 1
            return messages[handed - 1]
        await asyncio.sleep(3600)  # a real server waits for the client

    async def send(event):
        sent.append(event)

    await middleware(scope_, receive, send)
    return sent, handed


def answer(sent: list[dict]) -> tuple[int, dict, bytes]:
    start = [e for e in sent if e["type"] == "http.response.start"]
    assert len(start) == 1, sent
    body = b"".join(e.get("body", b"") for e in sent if e["type"] == "http.response.body")
    return start[0]["status"], {k.decode(): v.decode() for k, v in start[0]["headers"]}, body


def test_content_length_over_the_limit_is_refused_before_the_app_runs(caplog):
    app = FakeApp()
    with caplog.at_level(logging.INFO, logger="dashboard"):
        sent, handed = asyncio.run(exchange(limits(app), scope(length=1200), chunks(400, 400, 400)))
    status, headers, body = answer(sent)
    assert (status, body) == (413, b"body of 1200 bytes is too large.")
    assert headers["content-type"].startswith("text/plain") and headers["content-length"] == str(len(body))
    # up to `drain` bytes: the body is read to its end and dropped, then answered (a client
    # that reads only once it has sent everything gets the answer); the connection is kept
    assert not app.called and handed == 3 and "connection" not in headers
    assert "refused /gradio_api/call/classify (POST, HTTP 413): body of 1200 bytes is too large." in caplog.text
    # the upload route has its own limit and sentence; a body over `drain` is answered at
    # once, not a byte of it read, and the connection closed
    sent, handed = asyncio.run(exchange(limits(app), scope("/gradio_api/upload", length=10**9), chunks(10**4)))
    status, headers, body = answer(sent)
    assert (status, body, headers["connection"]) == (413, b"upload of 1000000000 bytes is too large.", "close")
    assert not app.called and handed == 0
    # a client waiting for "100 Continue" never sends the body: close rather than wait for it
    sent, handed = asyncio.run(exchange(limits(app), scope(length=1001, expect=True), chunks(1001)))
    assert answer(sent)[1]["connection"] == "close" and handed == 0


def test_streamed_body_is_cut_off_at_the_limit():
    """No Content-Length (chunked): the chunk that passes the limit never reaches the app."""
    app = FakeApp()
    sent, handed = asyncio.run(exchange(limits(app, large=10**6), scope(), chunks(400, 400, 400, 400)))
    status, headers, body = answer(sent)
    assert (status, body, headers["connection"]) == (413, b"body of None bytes is too large.", "close")
    assert [len(m["body"]) for m in app.messages] == [400, 400] and isinstance(app.raised, BodyRefused)
    assert handed == 3  # the fourth chunk was never read
    # the upload route, at its own limit
    app = FakeApp()
    sent, handed = asyncio.run(exchange(limits(app, large=10**6), scope("/gradio_api/upload/"), chunks(300, 300, 1)))
    assert answer(sent)[0::2] == (413, b"upload of None bytes is too large.") and handed == 2


def test_bodies_within_the_limit_pass_unchanged():
    for path, size in (("/gradio_api/call/classify", 1000), ("/gradio_api/upload", 500), ("/config", 0)):
        app = FakeApp()
        messages = chunks(size // 2, size - size // 2)
        sent, handed = asyncio.run(exchange(limits(app, large=10**6), scope(path, length=size), messages))
        assert app.messages == messages and handed == 2
        assert sent == [{"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]},
                        {"type": "http.response.body", "body": str(size).encode(), "more_body": False}]
    # without a length too; and what is not HTTP passes untouched
    app = FakeApp()
    sent, _ = asyncio.run(exchange(limits(app, large=10**6), scope(), chunks(500, 500)))
    assert answer(sent)[0::2] == (200, b"1000")
    seen = []

    async def websocket_app(scope_, receive, send):
        seen.append(scope_["type"])

    asyncio.run(limits(websocket_app)({"type": "websocket", "path": "/x", "headers": []}, None, None))
    assert seen == ["websocket"]


def test_upload_route_413_is_answered_in_the_apps_sentence():
    """Gradio's own 413 from the upload route (its per-file max_file_size) is replaced; other
    routes' 413s and the upload route's other answers pass as they are."""
    sent, _ = asyncio.run(exchange(limits(FakeApp(status=413)), scope("/gradio_api/upload", length=400), chunks(400)))
    status, headers, body = answer(sent)
    assert (status, body, headers["content-type"]) == (413, b"upload of 400 bytes is too large.",
                                                       "text/plain; charset=utf-8")
    sent, _ = asyncio.run(exchange(limits(FakeApp(status=413)), scope(length=400), chunks(400)))
    assert answer(sent)[0::2] == (413, b"400")
    sent, _ = asyncio.run(exchange(limits(FakeApp(status=400)), scope("/gradio_api/upload", length=4), chunks(4)))
    assert answer(sent)[0::2] == (400, b"4")


def test_large_bodies_are_received_a_few_at_a_time():
    async def scenario():
        hold = asyncio.Event()
        middleware = limits(FakeApp(hold=hold), max_large=1)
        first = asyncio.create_task(exchange(middleware, {**scope(length=400), "hold": True}, chunks(400)))
        await asyncio.sleep(0.01)
        assert middleware.large_in_flight == 1
        by_length = await exchange(middleware, scope(length=400), chunks(400))
        streamed = await exchange(middleware, scope(), chunks(200, 200))  # passes `large` while streaming
        small = await exchange(middleware, scope(length=100), chunks(100))  # small bodies need no slot
        hold.set()
        first_sent, _ = await first
        after = await exchange(middleware, scope(length=400), chunks(400))
        return by_length[0], streamed[0], small[0], first_sent, after[0], middleware.large_in_flight

    by_length, streamed, small, first, after, in_flight = asyncio.run(scenario())
    status, headers, body = answer(by_length)
    assert (status, body, headers["retry-after"]) == (503, BUSY.encode(), "2")
    assert "connection" not in headers
    status, headers, body = answer(streamed)
    assert (status, body, headers["connection"]) == (503, BUSY.encode(), "close")
    assert answer(small)[0::2] == (200, b"100")
    assert answer(first)[0::2] == (200, b"400") and answer(after)[0::2] == (200, b"400")
    assert in_flight == 0  # every slot given back


def test_a_client_gone_mid_body_is_an_error_the_upload_parser_cleans_up_on():
    """Gradio's upload parser deletes its partial file on a MultiPartException (ClientGone is
    one), not on Starlette's ClientDisconnect; a disconnect after the body passes as it is."""
    app = FakeApp()
    gone = [{"type": "http.disconnect"}]
    sent, _ = asyncio.run(exchange(limits(app), scope("/gradio_api/upload", length=400), chunks(200, 200)[:1] + gone))
    assert isinstance(app.raised, ClientGone)
    assert answer(sent)[0::2] == (400, b"the app's own answer")  # passed on (the server drops it: no client)
    seen = []

    async def listener(scope_, receive, send):
        seen.extend([await receive(), await receive()])

    asyncio.run(exchange(limits(listener), scope(length=10), chunks(10) + gone))
    assert seen == chunks(10) + gone


def test_app_errors_are_not_swallowed():
    async def broken(scope_, receive, send):
        await receive()
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(exchange(limits(broken), scope(length=10), chunks(10)))


# --------------------------------------------------------------------------------------
# A real server
# --------------------------------------------------------------------------------------
FILE = {"_type": "gradio.FileData"}
HUGE = 200 * MB
CONCURRENT = 16
#: One route of each kind: a call, the queue, the upload route, and two that Gradio adds.
ROUTES = ("gradio_api/call/classify", "gradio_api/queue/join", "gradio_api/upload", "gradio_api/run/classify",
          "gradio_api/component_server")


def send_body(port: int, path: str, total: int, *, with_length: bool = True) -> tuple[int, str]:
    """POST ``total`` bytes to ``path`` as the soak benchmark does (:func:`benchmarks.soak.stream_body`:
    streamed from a generator of 256 KB chunks, read while sending). ``(HTTP status, body)``."""
    return stream_body(f"http://127.0.0.1:{port}", path.removeprefix("gradio_api/"), total, chunked=not with_length)


def vm(pid: int, field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def limited(models_dir: Path, tmp_path_factory):
    from conftest import run_app

    uploads = tmp_path_factory.mktemp("uploads")
    with run_app(models_dir, tmp_path_factory.mktemp("app-logs"), extra_args=("--upload-dir", str(uploads))) as server:
        yield server, uploads


def test_oversized_bodies_on_every_route(limited, cifar_images):
    """16 concurrent 200 MB bodies to each route, with Content-Length and without (chunked):
    all refused with one sentence; the server's peak RSS rises by < 100 MB; nothing is
    written; the next /classify answers as usual."""
    import app

    server, uploads = limited
    port, pid = int(server.url.rstrip("/").rsplit(":", 1)[1]), server.process.pid
    png = cifar_images[0].path.read_bytes()
    assert raw_call(server.url, "classify", [{"url": data_url(png)["url"], "meta": FILE}, "hybrid"])[0] == "complete"
    before_files, before_peak = files_in(uploads), vm(pid, "VmHWM")
    rss = [vm(pid, "VmRSS")]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.05):
            rss.append(vm(pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    answers: dict[tuple[str, bool], list[tuple[int, str]]] = {}
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CONCURRENT) as pool:
            for route in ROUTES:
                for with_length in (True, False):
                    jobs = [pool.submit(send_body, port, route, HUGE, with_length=with_length) for _ in range(CONCURRENT)]
                    answers[route, with_length] = [job.result() for job in jobs]
    finally:
        stop.set()
        sampler.join()
    elapsed = time.monotonic() - started
    rise = vm(pid, "VmHWM") - before_peak
    print(f"\n{len(ROUTES) * 2 * CONCURRENT} bodies of {HUGE // MB} MB in {elapsed:.1f} s; server VmHWM "
          f"{before_peak:.0f} -> {before_peak + rise:.0f} MB (+{rise:.0f}); VmRSS {rss[0]:.0f} -> max {max(rss):.0f} MB")
    for (route, with_length), replies in answers.items():
        upload = route.endswith("upload")
        size = HUGE if with_length else None
        expected = app.too_large_message(size) if upload else app.body_too_large_message(size)
        for status, body in replies:
            if not with_length and status == 503:  # over LARGE_BODY while 4 others were being received
                assert body == app.BUSY_MESSAGE, (route, body)
            else:
                assert (status, body) == (413, expected), (route, with_length, status, body)
        refused = sum(status == 413 for status, _ in replies)
        assert refused >= (CONCURRENT if with_length else 1), (route, with_length, replies)
    assert rise < 100, f"the server's peak RSS rose by {rise:.0f} MB"
    time.sleep(0.5)
    assert files_in(uploads) == before_files, "a refused body left a file behind"
    assert raw_call(server.url, "classify", [data_url(png), "hybrid"])[0] == "complete"
    log = server.log()
    assert "Traceback" not in log and log.count("refused /gradio_api/") >= len(ROUTES) * (CONCURRENT + 1)


def test_the_largest_image_still_fits_inline(limited, cifar_images):
    """A 10 MB image as a data URL (13.3 MB of base64) passes the body limit and is classified;
    one of 10.2 MB passes it too and the app refuses it by its size; a 12 MB one is refused by
    the body limit (HTTP 413) as any client sends it (urllib: the whole body, then the answer)."""
    import app
    from dashboard.service import MAX_UPLOAD_BYTES, too_large_message

    server, _ = limited
    png = cifar_images[0].path.read_bytes()
    largest = png + bytes(MAX_UPLOAD_BYTES - len(png))
    assert len(json.dumps({"data": [data_url(largest), "hybrid"]})) <= app.MAX_BODY
    event, value = raw_call(server.url, "classify", [data_url(largest), "hybrid"])
    assert event == "complete" and len(value[0]["confidences"]) == 5, value
    size = int(10.2 * MB)
    event, value = raw_call(server.url, "classify", [data_url(png + bytes(size - len(png))), None])
    assert event == "error" and value["error"] == too_large_message(size) == \
        "The uploaded file is 10.2 MB; the limit is 10 MB.", value
    body = json.dumps({"data": [data_url(png + bytes(12 * MB)), None]}).encode()
    request = urllib.request.Request(server.url + "gradio_api/call/classify", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=60)
    assert excinfo.value.code == 413
    assert excinfo.value.read().decode() == app.body_too_large_message(len(body)) == \
        "The request body is 16.0 MB; the limit is 14 MB, enough for one 10 MB image sent inline as a data URL."


def test_too_many_large_bodies_at_once(limited, cifar_images):
    """MAX_LARGE_BODIES bodies over LARGE_BODY being received hold the server's slots; the
    next large one is answered HTTP 503 with one sentence; small ones pass; once the slow
    clients have gone (leaving no partial file behind), large bodies are taken again."""
    import app

    server, uploads = limited
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    before = files_in(uploads)
    slow = []
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    for _ in range(app.MAX_LARGE_BODIES):  # slow clients: headers of a 5 MB upload, then 1 MB of it
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {5 * MB}\r\n"
                     "Content-Type: multipart/form-data; boundary=b\r\n\r\n".encode() + part + b"x" * MB)
        slow.append(sock)
    try:
        time.sleep(0.5)
        assert send_body(port, "gradio_api/call/classify", 2 * MB) == (503, app.BUSY_MESSAGE)
        assert send_body(port, "gradio_api/upload", 3 * MB) == (503, app.BUSY_MESSAGE)
        png = cifar_images[0].path.read_bytes()  # small bodies need no slot
        assert raw_call(server.url, "classify", [data_url(png), "hybrid"])[0] == "complete"
    finally:
        for sock in slow:
            sock.close()
    time.sleep(0.5)
    assert files_in(uploads) == before, "a client that went away mid-upload left a file behind"
    from benchmarks.raw_api import upload

    status, path = upload(server.url, "big.png", png + bytes(3 * MB))
    assert status == 200 and Path(path).stat().st_size == len(png) + 3 * MB
