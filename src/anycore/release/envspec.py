"""What a release declares, and the keys of its environment (pure: no uv, no processes).

``declared`` turns a service directory into requirements-file text: ``requirements.txt``
(with its ``-r``/``-c`` includes inlined, so the spec covers them), else the pinned closure
of a ``uv.lock`` beside ``pyproject.toml``, else ``[project] dependencies``. ``spec_key``
hashes what a release asks for, ``env_key`` what it resolved to (see anycore.release.env).
``resolved_set`` reads ``uv pip freeze`` without the linked runtime; ``redact`` masks
credentials in anything uv prints; ``IndexSettings`` is how the node tells uv where
packages are (environment variables only, never a command line).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anycore.errors import ReleaseFailed

# What a worker imports from the node's environment (anycore.worker.* and its imports).
RUNTIME = ("anycore", "msgspec", "uvloop")
_CREDENTIALS = re.compile(r"(\w[\w+.-]*://)[^/@\s]+@")


class EnvBuildFailed(ReleaseFailed):
    pass


def redact(text: str) -> str:
    """``https://user:secret@host/`` -> ``https://***@host/``: credentials never reach a log."""
    return _CREDENTIALS.sub(r"\1***@", text)


# -- what a release declares (pure) ---------------------------------------------------------

def declared(directory: str) -> str:
    """The declared requirements as requirements-file text ("" when none are declared).

    ``requirements.txt`` wins (with the files it includes by ``-r``/``-c``, inlined so the
    spec covers them); else a ``uv.lock`` beside ``pyproject.toml`` (its pinned set); else
    ``pyproject.toml``'s ``[project] dependencies``."""
    root = Path(directory)
    req = root / "requirements.txt"
    if req.is_file():
        return _inline(req, root, depth=0)
    pyproject = root / "pyproject.toml"
    lock = root / "uv.lock"
    if lock.is_file() and pyproject.is_file():
        try:
            return from_uv_lock(tomllib.loads(lock.read_text()))
        except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
            raise ReleaseFailed(root.name, f"uv.lock could not be read ({exc}) — run `uv lock` again") from None
    if pyproject.is_file():
        try:
            deps = tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", [])
        except tomllib.TOMLDecodeError as exc:
            raise ReleaseFailed(root.name, f"pyproject.toml is not valid TOML: {exc}") from None
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise ReleaseFailed(root.name, "pyproject.toml: [project] dependencies must be a list of strings")
        return "".join(f"{d}\n" for d in deps)
    return ""


def from_uv_lock(lock: dict[str, Any]) -> str:
    """Pinned requirements from a ``uv.lock``: the project's dependencies (not its dev
    groups) and theirs, each ``name==version`` with the marker of the edge that needs it."""
    packages = lock.get("package", [])
    by_name: dict[str, dict[str, Any]] = {}
    root = None
    for package in packages:
        by_name.setdefault(package["name"], package)
        source = package.get("source", {})
        if root is None and (source.get("virtual") == "." or source.get("editable") == "."):
            root = package
    if root is None:
        raise KeyError("no package with source '.' (the project)")
    # A package is needed under the OR, over every path from the project to it, of the AND
    # of the markers along that path (a marker is a frozenset of conjuncts; empty: always).
    # Visiting (package, path marker) pairs once each ends on cycles: the conjuncts are finite.
    needed: dict[str, set[frozenset[str]]] = {}
    edges = [(dep, frozenset()) for dep in root.get("dependencies", [])]
    seen: set[tuple[str, frozenset[str]]] = set()
    while edges:
        dep, path = edges.pop()
        package = by_name.get(dep["name"])
        if package is None or package is root:
            continue
        marker = path | ({dep["marker"]} if dep.get("marker") else set())
        if (dep["name"], marker) in seen:
            continue
        seen.add((dep["name"], marker))
        needed.setdefault(dep["name"], set()).add(marker)
        more = list(package.get("dependencies", []))
        for extra in dep.get("extra", []):
            more += package.get("optional-dependencies", {}).get(extra, [])
        edges += [(d, marker) for d in more]
    lines = []
    for name in sorted(needed):
        pin = f"{name}=={by_name[name]['version']}"
        if all(needed[name]):  # no path needs it unconditionally
            conjunctions = sorted(" and ".join(sorted(m if len(marker) == 1 else f"({m})" for m in marker))
                                  for marker in needed[name])
            pin += " ; " + (conjunctions[0] if len(conjunctions) == 1 else " or ".join(f"({c})" for c in conjunctions))
        lines.append(pin + "\n")
    return "".join(lines)


def _inline(path: Path, root: Path, depth: int) -> str:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        option = re.match(r"^(-r|--requirement|-c|--constraint)\s*=?\s*(\S+)$", line)
        if option and depth < 5:
            included = (path.parent / option.group(2)).resolve()
            if included.is_relative_to(root.resolve()) and included.is_file():
                prefix = "" if option.group(1) in ("-r", "--requirement") else "# constraint\n"
                lines.append(prefix + _inline(included, root, depth + 1).rstrip("\n"))
                continue
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def interpreter_tag() -> str:
    return f"{sys.implementation.name}-{platform.python_version()}{sys.abiflags}-{sysconfig.get_platform()}"


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def spec_key(tag: str, runtime: list[str], requirements: str) -> str:
    return _digest("spec", tag, "\n".join(runtime), requirements)


def env_key(tag: str, runtime: list[str], resolved: list[str]) -> str:
    return _digest("env", tag, "\n".join(runtime), "\n".join(sorted(resolved)))


def runtime_pins() -> list[str]:
    """``name==version`` of the worker runtime's distributions in the node's environment."""
    pins = []
    for name in RUNTIME:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def parse_installed(output: str) -> list[str]:
    """``+ greet==1.0`` lines of ``uv pip install`` -> ``["greet==1.0"]``."""
    return [m.group(1) for m in re.finditer(r"^\s*\+\s+(\S+)", output, re.MULTILINE)]


def resolved_set(freeze: str) -> list[str]:
    """The app's part of ``uv pip freeze``: the runtime's (linked) distributions left out."""
    runtime = {n.replace("_", "-") for n in RUNTIME}
    keep = []
    for line in freeze.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = re.split(r"[=<>!~ @;\[]", line.removeprefix("-e "), maxsplit=1)[0].lower().replace("_", "-")
        if line.startswith("-e ") or name in runtime:  # editables: only the runtime's (anycore from source)
            continue
        keep.append(line)
    return sorted(keep)


# -- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexSettings:
    """Where uv finds packages on this node (``anycore up --index-url/--extra-index-url/
    --find-links/--no-index``). Given to uv as environment variables only."""

    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def uv_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.index_url:
            env["UV_DEFAULT_INDEX"] = self.index_url
        if self.extra_index_urls:
            env["UV_INDEX"] = " ".join(self.extra_index_urls)
        if self.find_links:
            env["UV_FIND_LINKS"] = ",".join(self.find_links)
        if self.no_index:
            env["UV_NO_INDEX"] = "1"
        return env
