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
    # gitignore-style "data/" means the directory data: the walk matches names, so drop the slash.
    return [line.strip().rstrip("/") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def iter_files(directory: str) -> list[Path]:
    root = Path(directory)
    patterns = _ignore_patterns(root)
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        # A symlink to a directory is not walked into: it is packed as the link it is, so
        # unpacking can refuse it if it points outside the release.
        files += [rel_dir / d for d in sorted(dirnames) if Path(dirpath, d).is_symlink()]
        dirnames[:] = sorted(
            d for d in dirnames if not Path(dirpath, d).is_symlink()
        )
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
        # Each entry is framed (a target ends with NUL, content follows its length), so
        # bytes cannot move between files, or a file be split in two, with the same hash.
        if path.is_symlink():
            digest.update(b"L" + os.readlink(path).encode() + b"\0")
        elif path.is_file():
            stat = path.stat()
            # Only the owner's execute bit is identity (as in git): unpacking normalises the
            # other bits (tarfile's "data" filter drops group/other write, adds owner rw), so
            # hashing them made a 0o664 file's fetched bundle hash to another id.
            mode = 0o755 if stat.st_mode & 0o100 else 0o644
            digest.update(b"F%o %d\0" % (mode, stat.st_size))
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return f"{config.name}@{digest.hexdigest()[:12]}"


# -- bundles: the bytes of a release, as stored in the code store ------------------------
#
# A bundle is a gzipped tar of the files ``iter_files`` lists, with normalised metadata
# (mtime 0, uid/gid 0, no owner names) so the same tree packs to the same bytes. Unpacking
# trusts nothing: every member must be a regular file, a directory, or a symlink that
# resolves inside the release directory; no absolute path, no ``..``, no device or fifo;
# and the totals stay under the limits. The unpacked tree is then hashed again with the
# release's config, and must give the release id it was fetched as.

import gzip  # noqa: E402
import io  # noqa: E402
import tarfile  # noqa: E402

from anycore.errors import BundleRefused  # noqa: E402

MAX_BUNDLE_BYTES = 200 * 1024 * 1024
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_FILES = 50_000


def pack(directory: str) -> bytes:
    root = Path(directory)
    buffer = io.BytesIO()
    # mtime=0 in the gzip header too, so the same tree packs to the same bytes.
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in iter_files(directory):
            info = tar.gettarinfo(str(root / rel), arcname=str(rel))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(root / rel, "rb") as f:
                    tar.addfile(info, f)
            elif info.issym():
                tar.addfile(info)
    data = buffer.getvalue()
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleRefused(f"{directory} packs to {len(data) >> 20} MiB, over the {MAX_BUNDLE_BYTES >> 20} MiB limit — "
                            "list large files in .anycoreignore")
    return data


def unpack(data: bytes, dest: str) -> None:
    """Unpack a bundle into ``dest`` (which must not exist yet), refusing anything unsafe."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleRefused(f"bundle of {len(data)} bytes is over the {MAX_BUNDLE_BYTES} byte limit")
    root = Path(dest)
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) > MAX_FILES:
                raise BundleRefused(f"bundle has {len(members)} entries, over the {MAX_FILES} limit")
            for member in members:
                _check_member(member, root)
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise BundleRefused(f"bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            root.mkdir(parents=True)
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk refused (ENOSPC, EIO, ...), not the archive: the caller says so
        raise BundleRefused(f"bundle is not a valid release archive: {exc}") from None


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    parts = Path(name).parts
    if name.startswith("/") or ".." in parts or not parts:
        raise BundleRefused(f"bundle entry {name!r} escapes the release directory")
    if member.issym():
        target = member.linkname
        if target.startswith("/"):
            raise BundleRefused(f"bundle symlink {name!r} points to an absolute path {target!r}")
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
        if resolved.startswith("..") or os.path.isabs(resolved):
            raise BundleRefused(f"bundle symlink {name!r} -> {target!r} points outside the release directory")
    elif member.islnk():
        raise BundleRefused(f"bundle entry {name!r} is a hard link; only files, directories and symlinks are allowed")
    elif not (member.isreg() or member.isdir()):
        raise BundleRefused(f"bundle entry {name!r} is not a regular file, directory or symlink")


# -- the cached release directory: byte-compiled, then read-only ----------------------------

def seal(directory: str) -> None:
    """Byte-compile a verified release and make it read-only, so imports stay fast and a
    service's write into its code fails loudly (``PermissionError``) instead of vanishing
    on the next deploy. (The release id ignores ``__pycache__``, so the hash still holds.)"""
    import compileall

    compileall.compile_dir(directory, quiet=2, workers=1)
    for dirpath, dirnames, filenames in os.walk(directory, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & ~0o222)
        os.chmod(dirpath, os.stat(dirpath).st_mode & ~0o222)


def remove_tree(path: str | Path) -> None:
    """``shutil.rmtree`` for sealed (read-only) trees, whoever the node runs as."""
    import shutil

    for dirpath, _, _ in os.walk(path):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
