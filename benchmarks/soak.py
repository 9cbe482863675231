"""Soak: thousands of raw-API calls from many clients, good and bad mixed (loopback only).

    python benchmarks/soak.py [--calls 2000] [--clients 16] [--max-seconds 900]
        [--models-dir exports/models] [--upload-ttl-min 1] [--markdown OUT.md]

Starts ``app.py`` on 127.0.0.1 (a free port, its own upload folder in a temporary
directory), then ``--clients`` threads send ``--calls`` requests over plain HTTP (the
``/gradio_api/upload`` and ``/gradio_api/call/<endpoint>`` routes, as any client would),
drawn in a fixed shuffled order from this mix:

* **good** (57 %): a distinct CIFAR-10 image (flipped/shifted, so each runs the model) to
  ``/classify`` (3 in 4) or ``/spectra``, round-robin over every served model;
* **bad file** (15 %): a text file, a truncated PNG, an empty file, a PDF named .jpg;
* **oversized** (5 %): an 11 MB upload (the upload route must answer 413), a 12 MB image as
  a base64 data URL in the call itself (16 MB of JSON: the request body limit's 413), or a
  10.2 MB one (within the body limit: the app must refuse it);
* **huge body** (3 %): 200 MB streamed to ``/call/classify``, ``/queue/join``, ``/upload``
  or ``/run/classify``, with ``Content-Length`` or chunked: HTTP 413 with one sentence,
  or 503 (large bodies already being received) for a chunked one;
* **unknown model** (10 %);
* **malformed** (10 %): no inputs, text where a file goes, a server path, a slider out of
  range.

Bounded in count (``--calls``) and time (``--max-seconds``: no new call after it). Samples
the server's RSS and the upload folder (files, bytes) every second. Reports per kind: sent,
answered as expected, server errors (a good call that failed, a bad one answered with an
internal error or an unexpected HTTP status, or accepted); then memory and upload folder at the start,
peak and end, after one more upload TTL (the scheduled sweep), and after SIGTERM.
"""
from __future__ import annotations

import argparse
import base64
import os
import platform
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# Computed here, not imported from serving.paths: run as a script, this file puts the project
# on sys.path before it can import anything of it.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.app_latency import distinct_images  # noqa: E402
from benchmarks.raw_api import FILE, call, folder_state, rss_mb, start_server, upload  # noqa: E402

MIX = {"good": 57, "bad file": 15, "oversized": 5, "huge body": 3, "unknown model": 10, "malformed": 10}
HUGE = 200 * 2**20
HUGE_ROUTES = ("call/classify", "queue/join", "upload", "run/classify")


def stream_body(base: str, route: str, total: int, chunked: bool, timeout: float = 60) -> tuple[int, str]:
    """POST ``total`` bytes (JSON with an inline data URL, or a multipart upload) to
    ``/gradio_api/<route>``, streamed in 256 KB chunks (``Content-Length`` or chunked), and
    read the answer while sending (a server that refuses early closes the connection before
    the body is through). ``(HTTP status, body)``; ``(0, ...)`` when no answer came."""
    host, port = base.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    if route.endswith("upload"):
        head = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
        content_type = "multipart/form-data; boundary=b"
    else:
        head, content_type = b'{"data": [{"url": "data:image/png;base64,', "application/json"
    block = b"A" * (256 * 2**10)
    blocks, rest = divmod(total - len(head), len(block))

    def framed():  # one block, sent again and again, then what is left: ``total`` bytes in all
        for piece in [head] + [block] * blocks + ([block[:rest]] if rest else []):
            yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        if chunked:
            yield b"0\r\n\r\n"

    pieces = framed()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    out = f"POST /gradio_api/{route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n".encode()
    reply, deadline = bytearray(), time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as sock, selectors.DefaultSelector() as sel:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while time.monotonic() < deadline:
            head_end = reply.find(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", reply[:head_end]) if head_end >= 0 else None
            if length and len(reply) - head_end - 4 >= int(length.group(1)):
                break
            for _, mask in sel.select(timeout=1):
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(65536)
                    except (ConnectionError, BlockingIOError):
                        data = b""
                    if not data:
                        deadline = 0.0  # closed: parse what came
                        break
                    reply += data
                elif mask & selectors.EVENT_WRITE:
                    if not out:
                        out = next(pieces, b"")
                        if not out:  # all sent
                            sel.modify(sock, selectors.EVENT_READ)
                            continue
                    try:
                        out = out[sock.send(out):]
                    except BlockingIOError:
                        pass
                    except ConnectionError:  # the server answered and closed: read the answer
                        out = b""
                        sel.modify(sock, selectors.EVENT_READ)
    head, _, body = bytes(reply).partition(b"\r\n\r\n")
    return (int(head.split()[1]), body.decode(errors="replace")) if head else (0, "(no answer)")


# ------------------------------------------------------------------ the calls
class Soak:
    def __init__(self, base: str, models: list[str], images: list[Path], bad: dict[str, bytes], seed: int = 0) -> None:
        self.base, self.models, self.images, self.bad = base, models, images, bad
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[str] = []
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.big = b"\x89PNG\r\n\x1a\n" + bytes(11 * 2**20)  # 11 MB: over the 10 MB limit
        png = images[0].read_bytes()
        self.big_url = "data:image/png;base64," + base64.b64encode(png + bytes(12 * 2**20)).decode()
        self.over_url = "data:image/png;base64," + base64.b64encode(png + bytes(int(10.2 * 2**20) - len(png))).decode()
        self.statuses: dict[str, Counter] = defaultdict(Counter)  # HTTP answers to oversized and huge bodies

    def record(self, kind: str, ok: bool, what: str, started: float) -> None:
        with self.lock:
            self.counts[kind]["sent"] += 1
            self.counts[kind]["expected" if ok else "server error"] += 1
            self.latency[kind].append(time.perf_counter() - started)
            if not ok and len(self.failures) < 20:
                self.failures.append(f"{kind}: {what}")

    def run_one(self, index: int, kind: str) -> None:
        started = time.perf_counter()
        try:
            ok, what = getattr(self, "_" + kind.replace(" ", "_"))(index)
        except Exception as error:  # noqa: BLE001 - a broken connection is a server error
            # an over-limit upload may be cut off (connection reset) before the 413 is read
            refused_early = kind == "oversized" and isinstance(getattr(error, "reason", error), ConnectionError)
            ok, what = refused_early, f"{type(error).__name__}: {error}"
        self.record(kind, ok, what, started)

    def _file(self, name: str, payload: bytes) -> dict:
        status, path = upload(self.base, name, payload)
        if status != 200:
            raise RuntimeError(f"upload of {name} answered HTTP {status}")
        return {"path": path, "meta": FILE}

    def _good(self, index: int) -> tuple[bool, str]:
        image = self.images[index % len(self.images)]
        model = self.models[index % len(self.models)]
        ref = self._file(image.name, image.read_bytes())
        api, data = ("spectra", [ref, model, False, 3]) if index % 4 == 3 else ("classify", [ref, model])
        event, payload = call(self.base, api, data)
        return event == "complete", f"{api} {model}: {event} {str(payload)[:160]}"

    @staticmethod
    def _refused(event: str, payload: object) -> tuple[bool, str]:
        message = payload.get("error") if isinstance(payload, dict) else None
        ok = event == "error" and bool(message) and "internal error" not in str(message).lower()
        return ok, f"{event} {str(payload)[:160]}"

    def _bad_file(self, index: int) -> tuple[bool, str]:
        name = sorted(self.bad)[index % len(self.bad)]
        return self._refused(*call(self.base, "classify", [self._file(name, self.bad[name]), None]))

    @staticmethod
    def _one_sentence(text: str) -> bool:
        return bool(text) and "\n" not in text and text.endswith(".") and len(re.findall(r"[.!?](?:\s|$)", text)) == 1

    def _oversized(self, index: int) -> tuple[bool, str]:
        if index % 3 == 0:
            status, _ = upload(self.base, "big.png", self.big)
            self.statuses["oversized"][status] += 1
            return status in (413, 503), f"upload answered HTTP {status}"
        event, payload = call(self.base, "classify", [{"url": self.big_url if index % 3 == 1 else self.over_url,
                                                       "meta": FILE}, None])
        self.statuses["oversized"][event] += 1
        if event in ("http 413", "http 503"):  # the body limit, or large bodies already being received
            return self._one_sentence(str(payload)), f"{event} {str(payload)[:160]}"
        return self._refused(event, payload)

    def _huge_body(self, index: int) -> tuple[bool, str]:
        route, chunked = HUGE_ROUTES[index % len(HUGE_ROUTES)], bool(index // len(HUGE_ROUTES) % 2)
        status, text = stream_body(self.base, route, HUGE, chunked)
        self.statuses["huge body"][status] += 1
        ok = (status == 413 or (chunked and status == 503)) and self._one_sentence(text)
        return ok, f"{route} ({'chunked' if chunked else 'Content-Length'}): HTTP {status} {text[:160]}"

    def _unknown_model(self, index: int) -> tuple[bool, str]:
        image = self.images[index % len(self.images)]
        ref = self._file(image.name, image.read_bytes())
        return self._refused(*call(self.base, "classify", [ref, "no-such-model"]))

    def _malformed(self, index: int) -> tuple[bool, str]:
        image = self.images[index % len(self.images)]
        cases = [
            ("classify", []),
            ("classify", ["not a file", None]),
            ("classify", [{"path": "/etc/passwd", "meta": FILE}, None]),
            ("spectra", [self._file(image.name, image.read_bytes()), None, False, 99]),
        ]
        return self._refused(*call(self.base, *cases[index % len(cases)]))


def bad_files() -> dict[str, bytes]:
    png = (ROOT / "dashboard" / "examples").glob("*.png").__next__().read_bytes()
    return {"notes.txt": b"this is not an image\n" * 20, "truncated.png": png[: len(png) // 2],
            "empty.png": b"", "fake.jpg": b"%PDF-1.4\n" + b"0" * 2000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=900, help="no new call after this (default 900)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "exports" / "models")
    parser.add_argument("--upload-ttl-min", type=float, default=1.0, help="the server's upload TTL (default 1 min)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the report here too")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        uploads, log_path = tmp / "uploads", tmp / "app.log"
        uploads.mkdir()
        process, base = start_server(args.models_dir, uploads, args.upload_ttl_min, log_path)
        try:
            report = soak(args, process, base, uploads, tmp)
        finally:
            if process.poll() is None:
                process.kill()
        log = log_path.read_text(errors="replace")
        report.append(f"Server log: {len(log.splitlines())} lines, {log.count('Traceback')} tracebacks, "
                      f"{log.count('refused /')} 'refused' lines.")
    text = "\n".join(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


def soak(args: argparse.Namespace, process: subprocess.Popen, base: str, uploads: Path, tmp: Path) -> list[str]:
    models = [m["name"] for m in call(base, "models", [])[1][0]["models"]]
    good = int(args.calls * MIX["good"] / 100) + 1
    soaker = Soak(base, models, distinct_images(tmp, good), bad_files())
    kinds = [kind for kind, share in MIX.items() for _ in range(share)]  # 100 slots
    random.Random(0).shuffle(kinds)  # every run of 100 calls has the exact mix, in a fixed order
    plan = [(i, kinds[i % len(kinds)]) for i in range(args.calls)]
    for model in models:  # warm-up, untimed: sessions created, first-call allocations done
        soaker._good(models.index(model) + len(models) * 10_000)

    samples: list[tuple[float, float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append((time.monotonic(), rss_mb(process.pid), *folder_state(uploads)))

    start_rss, start_folder = rss_mb(process.pid), folder_state(uploads)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    counter = iter(plan)
    counter_lock = threading.Lock()

    def client() -> None:
        while time.monotonic() - started < args.max_seconds:
            with counter_lock:
                item = next(counter, None)
            if item is None:
                return
            soaker.run_one(*item)

    with ThreadPoolExecutor(args.clients) as pool:
        for future in [pool.submit(client) for _ in range(args.clients)]:
            future.result()
    wall = time.monotonic() - started
    end_rss, end_folder = rss_mb(process.pid), folder_state(uploads)
    time.sleep(args.upload_ttl_min * 60 * 1.3 + 2)  # one TTL and a sweep later
    swept_rss, swept_folder = rss_mb(process.pid), folder_state(uploads)
    stop.set()
    health = call(base, "health", [])[1][0]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    after_folder = folder_state(uploads)

    total = Counter()
    rows = ["| kind | sent | answered as expected | server errors | p50 / p95 (s) |", "|---|---:|---:|---:|---:|"]
    for kind in MIX:
        c = soaker.counts[kind]
        total.update(c)
        lat = soaker.latency[kind] or [float("nan")]
        p50, p95 = np.percentile(lat, [50, 95])
        rows.append(f"| {kind} | {c['sent']} | {c['expected']} | {c['server error']} | {p50:.2f} / {p95:.2f} |")
    rows.append(f"| **all** | {total['sent']} | {total['expected']} | {total['server error']} | |")
    answers = "; ".join(f"{kind}: " + ", ".join(f"{answer} × {n}" for answer, n in sorted(c.items(), key=str))
                        for kind, c in soaker.statuses.items())
    peak_rss = max([s[1] for s in samples] + [end_rss])
    peak_files = max([s[2] for s in samples] + [end_folder[0]])
    peak_bytes = max([s[3] for s in samples] + [end_folder[1]])
    mid = [s[1] for s in samples if s[0] - started >= wall / 2] or [end_rss]
    load = os.getloadavg()
    report = [
        f"Soak: {total['sent']} calls from {args.clients} clients in {wall:.0f} s "
        f"({total['sent'] / wall:.1f} calls/s), models {', '.join(models)}.",
        "",
        *rows,
        "",
        f"Answers to over-limit bodies (HTTP status or event): {answers or 'none sent'}.",
        "",
        "| server | at start | peak | end of calls | one TTL later | after SIGTERM |",
        "|---|---:|---:|---:|---:|---:|",
        f"| RSS (MB) | {start_rss:.0f} | {peak_rss:.0f} | {end_rss:.0f} | {swept_rss:.0f} | – |",
        f"| upload folder files | {start_folder[0]} | {peak_files} | {end_folder[0]} | {swept_folder[0]} | "
        f"{after_folder[0]} |",
        f"| upload folder MB | {start_folder[1] / 2**20:.2f} | {peak_bytes / 2**20:.2f} | "
        f"{end_folder[1] / 2**20:.2f} | "
        f"{swept_folder[1] / 2**20:.2f} | {after_folder[1] / 2**20:.2f} |",
        "",
        f"RSS over the second half of the run: min {min(mid):.0f} MB, max {max(mid):.0f} MB. "
        f"Result caches at the end: {health['cache_bytes'] / 2**20:.1f} MB of a "
        f"{health['cache_budget_bytes'] / 2**20:.0f} MB budget.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; load average (1/5/15 min) at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
    ]
    if soaker.failures:
        report += ["", "First failures:", *[f"- {f}" for f in soaker.failures]]
    return report


if __name__ == "__main__":
    sys.exit(main())
