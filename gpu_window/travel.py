"""Here, around the window: what a device call carries (tracked and unignored files,
``shared/``, the ``carry`` paths: 64 MiB in all) and returns (8 files, 16 MiB each, 64 MiB
in all), the CIFAR-10 JPEG copy it carries (``data/``), and the scratch branch that leaves
the bundled models behind (``prepare``, then ``restore`` after the window)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.files import atomic_write, atomic_write_text

from .record import WindowError

MiB = 1 << 20
TREE_LIMIT = 64 * MiB
OUT_FILES, OUT_FILE_BYTES, OUT_TOTAL_BYTES = 8, 16 * MiB, 64 * MiB
DATA_FILES = ("cifar10_train_jpeg_part0.npz", "cifar10_train_jpeg_part1.npz", "cifar10_test_jpeg.npz")
DATA_DIR = "data"  # git-ignored (/data/ in .gitignore): carried, never tracked
SCRATCH_BRANCH = "gpu-window"
MODELS_DIR = "exports/models"
EXCLUDE_LINE = "/exports/models/"
STATE_FILE = "gpu-window.json"  # inside .git


# --------------------------------------------------------------------------------------
# What travels: the tree of a device call
# --------------------------------------------------------------------------------------
def _git(repo: Path, *args: str, env: dict | None = None, check: bool = True) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise WindowError(f"git {' '.join(args)} failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    return result.stdout


def travel_files(repo: Path, carry: Sequence[str] = ()) -> list[tuple[str, int]]:
    """``(path, bytes)`` of what a device call sends: tracked files, untracked files git does
    not ignore, the checkout's ``shared/`` and the ``carry`` paths (the device README's rule)."""
    listed = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    files: dict[str, int] = {}
    for rel in filter(None, listed):
        path = repo / rel
        if path.is_file() and not path.is_symlink():
            files[rel] = path.stat().st_size
    for extra in [*carry, "shared"]:
        root = repo / extra
        walk = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in walk:
            if not path.is_symlink():
                files[str(path.relative_to(repo))] = path.stat().st_size
    return sorted(files.items())


def travel_bytes(repo: Path, carry: Sequence[str] = ()) -> int:
    return sum(size for _, size in travel_files(repo, carry))


def check_out_limits(out: Path) -> dict[str, Any]:
    """Files under ``out`` against the return limits; ``ok`` False names the first breach."""
    files = [(str(p.relative_to(out)), p.stat().st_size) for p in sorted(out.rglob("*")) if p.is_file()]
    total = sum(size for _, size in files)
    problems = []
    if len(files) > OUT_FILES:
        problems.append(f"{len(files)} files (limit {OUT_FILES})")
    problems += [f"{name} is {size / MiB:.1f} MiB (limit 16)" for name, size in files if size > OUT_FILE_BYTES]
    if total > OUT_TOTAL_BYTES:
        problems.append(f"{total / MiB:.1f} MiB in all (limit 64)")
    return {"files": files, "total_bytes": total, "ok": not problems, "problems": problems}


# --------------------------------------------------------------------------------------
# prepare / restore (here, around the window)
# --------------------------------------------------------------------------------------
def _state_path(repo: Path) -> Path:
    return Path(_git(repo, "rev-parse", "--absolute-git-dir").strip()) / STATE_FILE


def _exclude_path(repo: Path) -> Path:
    return Path(_git(repo, "rev-parse", "--absolute-git-dir").strip()) / "info" / "exclude"


def _set_exclude(repo: Path, present: bool) -> None:
    path = _exclude_path(repo)
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if line.strip() != EXCLUDE_LINE] + ([EXCLUDE_LINE] if present else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def copy_data(repo: Path, source: Path) -> Path:
    """The CIFAR-10 JPEG copy into ``repo/data`` (git-ignored), copied once (same size = kept)."""
    target = repo / DATA_DIR
    target.mkdir(exist_ok=True)
    for name in DATA_FILES:
        src = source / name
        if not src.is_file():
            raise WindowError(f"{src} not found: pass --data-src, the folder with the CIFAR-10 JPEG copy ({', '.join(DATA_FILES)})")
        dst = target / name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
    if subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", f"{DATA_DIR}/{DATA_FILES[0]}"]).returncode != 0:
        raise WindowError(f"{DATA_DIR}/ is not git-ignored here: it would travel twice (add /{DATA_DIR}/ to .gitignore)")
    return target


def prepare(repo: Path, data_src: Path, log=print) -> dict[str, Any]:
    """Make the working tree a device call can carry (see the module docstring).

    A scratch branch whose one commit drops ``exports/models`` from the index (the files stay
    on disk, ignored through ``.git/info/exclude``); other staged or unstaged work is left as
    it is. Then the data is copied and the travelling size checked against 64 MiB.
    """
    state_path = _state_path(repo)
    if not state_path.exists():
        if _git(repo, "status", "--porcelain", "--", MODELS_DIR).strip():
            raise WindowError(f"{MODELS_DIR} has uncommitted changes: commit them before prepare")
        head = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
        original = head if head != "HEAD" else _git(repo, "rev-parse", "HEAD").strip()
        # The scratch commit is built on a private index, so whatever else is staged stays staged.
        env = dict(os.environ, GIT_INDEX_FILE=str(state_path.with_suffix(".index")))
        _git(repo, "read-tree", "HEAD", env=env)
        _git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", MODELS_DIR, env=env)
        tree = _git(repo, "write-tree", env=env).strip()
        commit = _git(repo, "-c", "user.name=gpu-window", "-c", "user.email=gpu-window@localhost", "commit-tree", tree,
                      "-p", "HEAD", "-m", f"scratch: {MODELS_DIR} untracked for device calls (gpu_window prepare)").strip()
        state_path.with_suffix(".index").unlink(missing_ok=True)
        _git(repo, "branch", "-f", SCRATCH_BRANCH, commit)
        _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{SCRATCH_BRANCH}")  # HEAD moves; files stay
        _git(repo, "rm", "-r", "-q", "--cached", "--ignore-unmatch", MODELS_DIR)
        _set_exclude(repo, True)
        atomic_write_text(state_path, json.dumps({"original": original, "scratch": commit}) + "\n")
        log(f"on scratch branch {SCRATCH_BRANCH} ({commit[:10]}); {MODELS_DIR} untracked and ignored; "
            f"'restore' returns to {original}")
    else:
        log(f"already prepared ({state_path}); checking sizes only")
    copy_data(repo, data_src)
    files = travel_files(repo, [DATA_DIR])
    total = sum(size for _, size in files)
    log(f"a device call carries {total / MiB:.1f} MiB (limit 64 MiB): tree {total / MiB - _dir_mib(repo / DATA_DIR):.1f} MiB "
        f"+ data/ {_dir_mib(repo / DATA_DIR):.1f} MiB")
    if total > TREE_LIMIT:
        biggest = ", ".join(f"{name} ({size / MiB:.1f} MiB)" for name, size in sorted(files, key=lambda f: -f[1])[:5])
        raise WindowError(f"the tree a device call would carry is {total / MiB:.1f} MiB (> 64 MiB); biggest: {biggest}")
    return {"travel_bytes": total, "files": len(files)}


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MiB if path.is_dir() else 0.0


def restore(repo: Path, log=print) -> None:
    """Back to the branch ``prepare`` left; refuses if ``exports/models`` changed meanwhile."""
    state_path = _state_path(repo)
    if not state_path.exists():
        raise WindowError("nothing to restore: 'prepare' has not been run here (or 'restore' already ran)")
    state = json.loads(state_path.read_text())
    original = state["original"]
    tip = _git(repo, "rev-parse", "-q", "--verify", f"refs/heads/{SCRATCH_BRANCH}", check=False).strip()
    if tip and tip != state["scratch"]:
        raise WindowError(f"{SCRATCH_BRANCH} has commits made after prepare: move them to {original} first "
                          f"(git cherry-pick), then restore")
    tracked = {}
    for line in _git(repo, "ls-tree", "-r", original, "--", MODELS_DIR).splitlines():
        meta, path = line.split("\t", 1)
        tracked[path] = meta.split()[2]
    changed = [p for p, blob in tracked.items()
               if not (repo / p).is_file() or _git(repo, "hash-object", "--", p).strip() != blob]
    if changed:
        raise WindowError(f"{changed[0]} differs from {original}'s copy: restore before ingest "
                          f"(put {MODELS_DIR} back as it was, e.g. git show {original}:{changed[0]})")
    _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{original}") if not _is_sha(original) else _git(repo, "update-ref", "--no-deref", "HEAD", original)
    _git(repo, "reset", "-q", "--", MODELS_DIR)  # index entries of the models back from the original commit
    _set_exclude(repo, False)
    _git(repo, "branch", "-D", SCRATCH_BRANCH, check=False)
    state_path.unlink()
    log(f"back on {original}; {MODELS_DIR} tracked again")


def _is_sha(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)
