"""Fixture wheels written in the test (a wheel is a zip with a dist-info): no build tool,
no index, no internet. uv installs them from a ``--find-links`` directory."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path
from typing import Iterable, Iterator


def make_wheel(dest: Path, name: str, version: str, requires: tuple[str, ...] = (),
               files: dict[str, str] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    files = dict(files or {f"{name}/__init__.py": f'VERSION = "{version}"\n'})
    info = f"{name}-{version}.dist-info"
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires))
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: anycore-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    path = dest / f"{name}-{version}-py3-none-any.whl"
    _write_wheel(path, info, ((member, text.encode()) for member, text in files.items()))
    return path


def _write_wheel(path: Path, info: str, members: Iterable[tuple[str, bytes]]) -> None:
    """A wheel at ``path`` holding ``members`` and the RECORD that lists them."""
    record = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for member, data in members:
            archive.writestr(member, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")


def wheel_from_installed(dest: Path, name: str) -> Path:
    """Pack an installed distribution (files from its RECORD, its own WHEEL tags) back into a
    wheel, so a test can install it offline into a release environment."""
    import importlib.metadata

    dist = importlib.metadata.distribution(name)
    dest.mkdir(parents=True, exist_ok=True)
    info = next(str(f).split("/")[0] for f in dist.files or [] if str(f).endswith(".dist-info/METADATA"))
    wheel_text = (dist.read_text("WHEEL") or "")
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:")] or ["py3-none-any"]
    version = dist.version
    normalized = dist.metadata["Name"].replace("-", "_")
    path = dest / f"{normalized}-{version}-{tags[0]}.whl"

    def members() -> Iterator[tuple[str, bytes]]:
        for entry in dist.files or []:
            rel = str(entry)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(("/RECORD", "/INSTALLER", "/REQUESTED",
                                                                             "/direct_url.json")):
                continue
            source = Path(str(dist.locate_file(entry)))
            if source.is_file():
                yield rel, source.read_bytes()

    _write_wheel(path, info, members())
    return path
