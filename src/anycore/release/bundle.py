"""Release identity: the content hash of a service directory plus its config.

``name@hash12`` names one immutable snapshot of code and config. The walk is sorted and
hashes relative paths, file modes and contents, so the same tree gives the same id on
any machine; ``.git``, ``__pycache__``, virtualenvs and ``.anycoreignore`` patterns are
left out because they are not the service's code.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path

import msgspec

from anycore.config import ServiceConfig

ALWAYS_IGNORED = {".git", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".hypothesis", "node_modules"}


def _ignore_patterns(directory: Path) -> list[str]:
    path = directory / ".anycoreignore"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def iter_files(directory: str) -> list[Path]:
    root = Path(directory)
    patterns = _ignore_patterns(root)
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in ALWAYS_IGNORED and not (Path(dirpath, d) / "pyvenv.cfg").exists()
            and not any(fnmatch.fnmatch(str(rel_dir / d), p) or fnmatch.fnmatch(d, p) for p in patterns)
        )
        for name in sorted(filenames):
            rel = rel_dir / name
            if name.endswith((".pyc", ".pyo")) or any(fnmatch.fnmatch(str(rel), p) or fnmatch.fnmatch(name, p) for p in patterns):
                continue
            files.append(rel)
    return files


def release_id(directory: str, config: ServiceConfig) -> str:
    digest = hashlib.sha256()
    digest.update(msgspec.json.encode(config))
    root = Path(directory)
    for rel in iter_files(directory):
        path = root / rel
        digest.update(str(rel).encode() + b"\0")
        if path.is_symlink():
            digest.update(b"L" + os.readlink(path).encode())
        elif path.is_file():
            digest.update(b"F%o\0" % (path.stat().st_mode & 0o777))
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return f"{config.name}@{digest.hexdigest()[:12]}"
