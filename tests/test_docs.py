"""The documentation cannot drift: its code runs and its links resolve.

Conventions for README.md and docs/*.md:

* every fenced ```python block runs, as its own process, from the repository root (a
  ``python -c`` forked from one that has imported torch and onnx once: see ``FORK_SERVER``);
* a fenced ```output block right after a python block is that block's exact stdout;
* a fenced ```bash test block runs with bash (``-e``, ``python`` = this interpreter), its
  blocks of one page in order in one fresh temporary directory, so later blocks can use
  what earlier ones wrote; other shell blocks (installs, long trainings) are not run;
* the address ``http://127.0.0.1:7860/`` (the dashboard's default) in a python block is
  replaced by a dashboard started for the test on the bundled models.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_app
from serving.paths import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
DASHBOARD_URL = "http://127.0.0.1:7860/"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    flags: tuple[str, ...]
    code: str
    output: str | None = None  # the ```output block that follows, if any

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, each python block paired with a following ```output block."""
    text = page.read_text(encoding="utf-8")
    blocks: list[Block] = []
    for match in FENCE.finditer(text):
        info = match.group(1).split()
        lang, flags = (info[0].lower(), tuple(info[1:])) if info else ("", ())
        line = text.count("\n", 0, match.start()) + 1
        if lang == "output":
            previous = blocks[-1] if blocks else None
            if previous is None or previous.lang != "python" or previous.output is not None:
                raise AssertionError(f"{page.name}:{line}: an ```output block must follow a ```python block")
            previous.output = match.group(2)
            continue
        blocks.append(Block(page, line, lang, flags, match.group(2)))
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]
SHELL_PAGES = sorted({b.page for b in ALL_BLOCKS if b.lang in ("bash", "sh") and "test" in b.flags})


def _env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def dashboard_url(tmp_path_factory) -> str:
    """A dashboard on the bundled models, started only if a block needs one."""
    with run_app(REPO_ROOT / "exports" / "models", tmp_path_factory.mktemp("docs-app")) as server:
        yield server.url


def test_the_docs_have_code_to_run():
    # Guards the extractor itself: a regex that silently matched nothing would pass everything.
    assert len(PYTHON_BLOCKS) >= 5 and SHELL_PAGES
    assert any(b.output is not None for b in PYTHON_BLOCKS)


#: ``python -c FORK_SERVER``: imports the third-party packages every block's imports spend
#: most of their time in (torch with torch._dynamo, onnx: ~6 s of CPU a process on a 2-core CPU),
#: nothing of the project, nor onnxruntime (it starts a thread at import; the forked children
#: then abort at exit); then, per request line ``{"code", "stdout", "stderr"}``,
#: forks a child that runs the block as ``python -c CODE`` would (its own process, a fresh
#: ``__main__``, ``sys.argv == ["-c"]``, stdout/stderr to the files, stdin empty; an uncaught
#: exception prints its traceback and exits 1, ``sys.exit`` exits as asked; a 300 s limit) and
#: answers ``{"returncode"}`` (negative: killed by that signal).
FORK_SERVER = """
import json, os, sys, types

import numpy, onnx, torch, torch._dynamo  # noqa: F401  (the blocks' imports are then cache hits)

while line := sys.stdin.readline():
    request = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        import signal

        signal.alarm(300)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            os.dup2(os.open(path, flags, 0o644), fd)
        sys.argv = ["-c"]
        main = sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            exec(compile(request["code"], "<string>", "exec"), main.__dict__)
            status = 0
        except SystemExit as stop:  # as the interpreter handles it
            if stop.code is None or isinstance(stop.code, int):
                status = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                status = 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            status = 1
        # The interpreter's exit without its ~1 s teardown of torch's modules: non-daemon
        # threads joined, atexit handlers run, output flushed.
        import atexit, threading

        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("fork-server") / "stderr.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=REPO_ROOT, env=_env(), text=True,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    yield process, log
    process.stdin.close()
    process.wait(timeout=60)


def run_python_block(fork_server, code: str, folder: Path) -> subprocess.CompletedProcess:
    """``python -c code`` from the repository root, forked from ``fork_server``."""
    process, log = fork_server
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    process.stdin.write(json.dumps({"code": code, "stdout": str(out), "stderr": str(err)}) + "\n")
    process.stdin.flush()
    reply = process.stdout.readline()
    assert reply, f"the fork server exited ({process.poll()}):\n{log.read_text()[-4000:]}"
    return subprocess.CompletedProcess(["python", "-c", code], json.loads(reply)["returncode"],
                                       out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8"))


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_example_runs(block: Block, request, fork_server, tmp_path):
    code = block.code
    if DASHBOARD_URL in code:
        code = code.replace(DASHBOARD_URL, request.getfixturevalue("dashboard_url"))
    result = run_python_block(fork_server, code, tmp_path)
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    if block.output is not None:
        assert result.stdout.strip() == block.output.strip(), (
            f"{block.id}: the ```output block does not match what the code prints:\n{result.stdout}")


def test_a_block_runs_as_python_c_would(fork_server, tmp_path):
    """The fork server's children behave as ``python -c``: exit status, output, ``__main__``, no
    state left from an earlier block, and imports of the project as a fresh process does them."""
    code = ("import atexit, sys, threading; print(__name__, sys.argv); print('err', file=sys.stderr); x = 1\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hybrid_model', 'serving', 'training')))\n"
            "threading.Thread(target=lambda: print('thread')).start(); atexit.register(print, 'atexit')")
    result = run_python_block(fork_server, code, tmp_path)
    # the project's own modules are not there: each block imports them itself, as a fresh process does
    assert (result.returncode, result.stdout, result.stderr) == (0, "__main__ ['-c']\n[]\nthread\natexit\n", "err\n")
    result = run_python_block(fork_server, "print(x)", tmp_path)  # nothing carried over from the block before
    assert result.returncode == 1 and result.stderr.startswith("Traceback") and "NameError" in result.stderr
    assert run_python_block(fork_server, "import sys; sys.exit(3)", tmp_path).returncode == 3
    result = run_python_block(fork_server, "raise SystemExit('bye')", tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "bye\n")


@pytest.mark.parametrize("page", SHELL_PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_marked_shell_examples_run(page: Path, tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # "python" in the docs = this interpreter. A wrapper, not a symlink: a symlinked venv
    # python outside the venv's bin/ would not find pyvenv.cfg, hence not the venv's packages.
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    for block in (b for b in fenced_blocks(page) if b.lang in ("bash", "sh") and "test" in b.flags):
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=work,
                                env=_env(bin_dir), capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, f"{block.id} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


# --------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------
def github_anchor(heading: str) -> str:
    """GitHub's id for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # '#' lines in code are not headings
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)}


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def test_github_anchor_matches_githubs_rules():
    assert github_anchor("Python serving API") == "python-serving-api"
    assert github_anchor("Layers and models (`hybrid_model`)") == "layers-and-models-hybrid_model"
    assert github_anchor("Exporting models to ONNX (`exports/`)") == "exporting-models-to-onnx-exports"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_point_at_files_in_the_repository(page: Path):
    links = relative_links(page)
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.is_relative_to(REPO_ROOT):
            broken.append(f"{link} (outside the repository: a clone does not have it)")
        elif not path.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link} (no heading '#{anchor}' in {path.name})")
    assert not broken, f"{page.relative_to(REPO_ROOT)}: broken links: {broken}"


def test_readme_links_to_every_docs_page_and_the_license():
    readme_links = {link.partition("#")[0] for link in relative_links(REPO_ROOT / "README.md")}
    expected = {f"docs/{p.name}" for p in PAGES[1:]} | {"LICENSE", "CITATION.cff"}
    assert expected <= readme_links, f"README does not link to {sorted(expected - readme_links)}"


# --------------------------------------------------------------------------------------
# The README's two commands
# --------------------------------------------------------------------------------------
def quick_start_commands() -> list[str]:
    return [b.code.strip() for b in fenced_blocks(REPO_ROOT / "README.md")
            if b.lang == "bash" and "python3 -m venv .venv" in b.code]


def test_readme_commands_use_files_that_exist():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    serve, test = commands
    assert serve.endswith(".venv/bin/python app.py") and test.endswith(".venv/bin/python -m pytest")
    for command in commands:
        for name in re.findall(r"-r (\S+)", command):
            assert (REPO_ROOT / name).is_file(), f"the README installs {name}, which does not exist"


def test_ci_runs_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test = quick_start_commands()[1]
    # .ci/run may add pip's -q; otherwise it is the README's command.
    assert test.replace("pip install -r", "pip install -q -r") in ci or test in ci


# --------------------------------------------------------------------------------------
# Project settings (pyproject.toml)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["hybrid_model.layers", "training.train", "serving.runtime", "dashboard.service", "app"])
def test_deprecation_warnings_from_project_code_fail_the_tests(module: str):
    # The filters in pyproject.toml are active inside every test: a deprecation attributed
    # to the project's code must surface, not disappear as it did under pytest.ini.
    import warnings

    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, f"{module.replace('.', '/')}.py", 1, module=module)


def test_third_party_deprecations_stay_quiet():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("old API", DeprecationWarning, "somelib/x.py", 1, module="somelib.x")
        warnings.warn_explicit("old API", DeprecationWarning, "application.py", 1, module="application")
    assert caught == []


def test_license_citation_and_pyproject_agree():
    import tomllib

    import yaml

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    citation = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    assert project["license"] == citation["license"] == "Apache-2.0"
    assert project["version"] == citation["version"]
    cited = {ref["title"] for ref in citation["references"]}
    assert "Learning Strides in Convolutional Neural Networks" in cited  # DiffStride, the method implemented


# --------------------------------------------------------------------------------------
# Figures in the docs that can drift from their sources
# --------------------------------------------------------------------------------------
def test_gpu_window_figures_match_their_records():
    """The runbook's grid size is the protocol's, and each window's call times are the
    ones its window.json recorded (rounded to the second)."""
    page = (REPO_ROOT / "docs" / "gpu-window.md").read_text(encoding="utf-8")
    protocol = json.loads((REPO_ROOT / "training" / "sweeps" / "short_cifar10.json").read_text(encoding="utf-8"))
    per_seed = len(protocol["variants"]) * len(protocol["strides"]) * len(protocol.get("datasets", ["cifar10"]))
    assert f"{per_seed} points a seed" in page
    assert re.search(rf"\b{per_seed} points\b", (REPO_ROOT / "docs" / "training.md").read_text(encoding="utf-8"))
    window1 = json.loads((REPO_ROOT / "results" / "windows" / "2026-11-26-h200" / "call1" / "window.json").read_text())
    assert f"call 1 (`models --budget 500`) took {round(window1['elapsed_s'])} s" in page
    for call, wall in (("call1", "169.5"), ("call2", "530.3"), ("call3", "82.4")):  # the device tool's wall_s
        record = json.loads((REPO_ROOT / "results" / "windows" / "2026-12-04-h200" / call / "window.json").read_text())
        assert f"({wall} s)" in page and float(wall) >= record["elapsed_s"]  # the call covers the runbook's own time
    size = sum(p.stat().st_size for p in (REPO_ROOT / "exports" / "models").glob("*.onnx")) / 1e6
    match = re.search(r"the bundled ONNX files, ~(\d+) MB", page)
    assert match and abs(int(match.group(1)) - size) <= 2, (match and match.group(0), size)
