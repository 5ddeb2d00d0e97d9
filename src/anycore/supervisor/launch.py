"""L1 — how a release's processes are started: interpreter, user, environment, data directory.

The trust model. The node holds the control plane: the NATS token (``$ANYCORE_HOME/token``,
0600), the JetStream store (``nats/``) and the records of every service. A service's code
must reach none of it. So:

- Zygotes and workers get no ``ANYCORE_*`` or ``UV_*`` variable from the node's environment
  (``ANYCORE_TOKEN``, ``ANYCORE_HOME`` and index credentials stay with the node); they get
  only the service's ``env``, ``ANYCORE_SERVICE``, ``ANYCORE_RELEASE`` and
  ``ANYCORE_DATA_DIR``.
- A node running as root runs services as an unprivileged user: the service's ``user`` key,
  else the node's ``--user`` (default ``nobody``). The zygote drops root (groups, gid, uid)
  right after it is forked, before any of the service's code runs; its workers inherit it.
  A node running as another user runs services as itself (it cannot switch), and a
  ``user`` key is then ignored with a logged event.
- ``$ANYCORE_HOME`` becomes 0711, and so do ``releases/``, ``envs/`` and ``data/``: a
  service user can reach the paths it is given (its release, its environment, its data
  directory) but list none of them, so it cannot find another service's release; every
  other entry of the home is closed to others (``secure_home``).
- Each service's data directory ``data/<service>`` belongs to its user, mode 0700; it is
  never replaced by a deploy or a rollback. Services sharing one user share that user's
  rights: give each service its own ``user`` to keep their data apart.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path

from anycore.errors import ConfigError

PUBLIC = {"releases", "envs", "data", "node.json"}  # what a service user may traverse in the home
DEFAULT_USER = "nobody"
SCRUBBED_PREFIXES = ("ANYCORE_", "UV_")


@dataclass(frozen=True)
class Launch:
    """What a release's zygote runs as; the default is the node's interpreter and user."""

    python: str = sys.executable
    uid: int | None = None  # None: the node's own user
    gid: int | None = None
    user: str = ""
    env_hash: str = ""  # "" : the node's environment
    variables: dict[str, str] = field(default_factory=dict)  # ANYCORE_DATA_DIR, HOME, ...

    @property
    def env_name(self) -> str:
        return self.env_hash or "node"


def service_environ(base: dict[str, str], service_env: dict[str, str], launch: Launch, release: str) -> dict[str, str]:
    """The environment of a zygote: the node's, less its secrets, plus the service's."""
    env = {k: v for k, v in base.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env.update(service_env)
    env.update(launch.variables)
    env["ANYCORE_RELEASE"] = release
    return env


def resolve_user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"user {name!r} does not exist on this node — create it, or set another `user` in anycore.toml "
                          f"(or `anycore up --user`)") from None
    return entry.pw_uid, entry.pw_gid


def plan_user(configured: str, node_default: str, euid: int) -> tuple[str, str]:
    """(the user services run as, "" or why ``configured`` was ignored). Pure."""
    if euid != 0:
        why = f"user = {configured!r} ignored: the node does not run as root, so services run as the node's user" \
            if configured else ""
        return "", why
    return configured or node_default or DEFAULT_USER, ""


def check_reachable(path: Path, user: str, uid: int, gid: int | None) -> None:
    """The service user (``uid``, primary group ``gid`` only: supplementary groups are
    dropped) must be able to traverse ``path`` and every directory above it."""
    for parent in [path, *path.parents]:
        try:
            st = parent.stat()
        except OSError:
            continue
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            raise ConfigError(f"services run as {user!r} cannot reach {path}: {parent} is not traversable by other users — "
                              f"`chmod o+x {parent}`, choose an ANYCORE_HOME others can reach, or set `user`/--user")


def prepare_data_dir(home: Path, service: str, uid: int | None, gid: int | None) -> Path:
    """``$ANYCORE_HOME/data/<service>``: created once, owned by the service's user, 0700."""
    data = home / "data"
    data.mkdir(exist_ok=True)
    os.chmod(data, 0o711)
    path = data / service
    path.mkdir(exist_ok=True, mode=0o700)
    if uid is not None:
        stat = path.stat()
        if (stat.st_uid, stat.st_gid) != (uid, gid):
            os.chown(path, uid, gid if gid is not None else -1)
    return path


def secure_home(home: Path) -> None:
    """Make the home traversable (0711) and close everything in it a service has no business with."""
    os.chmod(home, 0o711)
    for entry in home.iterdir():
        if entry.is_symlink():
            continue
        if entry.name in PUBLIC:
            if entry.is_dir():
                os.chmod(entry, 0o711)  # reach a known path, list nothing
            continue
        mode = entry.stat().st_mode & 0o7777
        if mode & 0o077:
            os.chmod(entry, mode & ~0o077)


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """In a freshly forked zygote, before any service code: become the service's user."""
    if uid is None or (os.geteuid() == uid and gid in (None, os.getegid())):
        return
    os.setgroups([])
    if gid is not None:
        os.setgid(gid)
    os.setuid(uid)
