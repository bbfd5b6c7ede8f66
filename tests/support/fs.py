"""Files for the tests: writers, and what a folder holds (trees, names, counts, digests)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


def write_file(path: Path, data: bytes, age: float = 0) -> Path:
    """Write `data` at `path` (parents made); with `age`, its mtime is that many seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def regular_files(root: Path) -> list[Path]:
    """Every regular file under root (symlinks and special files not included)."""
    out: list[Path] = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                out.append(full)
    return out


def tree(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every regular file under root (one that vanishes meanwhile, such as a
    temporary name of a delivery in progress, is left out).
    """
    out: dict[str, bytes] = {}
    for path in regular_files(root):
        try:
            out[str(path.relative_to(root))] = path.read_bytes()
        except FileNotFoundError:
            continue
    return out


def all_entries(root: Path) -> list[str]:
    """The names of every file and folder under root."""
    return [name for _, dirs, files in os.walk(root) for name in files + dirs]


def count_files(root: Path) -> int:
    """How many files (of any kind) are under root; 0 when root does not exist."""
    return sum(len(files) for _, _, files in os.walk(root)) if root.exists() else 0


def digest(data: bytes) -> str:
    """SHA-256 of `data`, in hex."""
    return hashlib.sha256(data).hexdigest()


def digest_file(path: Path) -> str:
    """SHA-256 of the file at `path`, in hex, read in chunks."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
