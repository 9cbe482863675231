"""The dashboard's raw HTTP API for benchmarks: upload, call, and a server of our own.

Plain ``urllib`` against ``/gradio_api/upload`` and ``/gradio_api/call/<endpoint>`` (what
any HTTP client does), and ``start_server``: ``app.py`` on 127.0.0.1 on a free port, with
its own upload folder, plus its RSS and CPU time from ``/proc`` (Linux).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.paths import REPO_ROOT

FILE = {"_type": "gradio.FileData"}

__all__ = ["FILE", "upload", "call", "start_server", "rss_mb", "cpu_seconds", "folder_state", "free_port"]


# ------------------------------------------------------------------ HTTP
def _post(url: str, body: bytes, content_type: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def upload(base: str, name: str, payload: bytes, timeout: float = 120) -> tuple[int, str | None]:
    """``/gradio_api/upload`` (multipart): ``(HTTP status, server path or None)``."""
    boundary = "soakboundary7d1f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    status, reply = _post(base + "gradio_api/upload", body, f"multipart/form-data; boundary={boundary}", timeout)
    return status, (json.loads(reply)[0] if status == 200 else None)


def call(base: str, api: str, data: list, timeout: float = 120) -> tuple[str, object]:
    """``/gradio_api/call/{api}``: ``("complete" | "error" | "http NNN", payload)``."""
    status, reply = _post(base + f"gradio_api/call/{api}", json.dumps({"data": data}).encode(), "application/json",
                          timeout)
    if status != 200:
        return f"http {status}", reply[:200].decode(errors="replace")
    event_id = json.loads(reply)["event_id"]
    with urllib.request.urlopen(base + f"gradio_api/call/{api}/{event_id}", timeout=timeout) as response:
        lines = response.read().decode().splitlines()
    events = [line[7:] for line in lines if line.startswith("event: ")]
    data_lines = [line[6:] for line in lines if line.startswith("data: ")]
    payload = json.loads(data_lines[-1]) if data_lines else None
    return (events[-1] if events else "none"), payload


# ------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_state(folder: Path) -> tuple[int, int]:
    """``(files, bytes)`` under ``folder`` (the server deletes files meanwhile: walk tolerantly)."""
    files = bytes_ = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                bytes_ += os.stat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                continue
    return files, bytes_


def start_server(models_dir: Path, uploads: Path, ttl_min: float, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), "--models-dir",
             str(models_dir), "--upload-dir", str(uploads), "--upload-ttl-min", str(ttl_min)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    base = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"app exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "config", timeout=2):
                return process, base
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("app did not start within 180 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
