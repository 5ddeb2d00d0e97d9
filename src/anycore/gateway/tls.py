"""``--tls-cert``/``--tls-key``: the files, read and checked before the node starts.

TLS is terminated by the native gateway (rustls, ALPN h2 and http/1.1): the node reads
the two PEM files and sends them in ``dataplane.Tls``, again on SIGHUP (new connections
get the new certificate, open ones keep theirs). The Python gateway serves no TLS: the
CLI refuses ``--tls-cert`` with ``--gateway python`` (``python_refusal``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from anycore.errors import ConfigError

MAX_PEM = 60 * 1024  # certificate chain + key, so that one control datagram (64 KiB) carries them


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str

    def read(self) -> tuple[bytes, bytes]:
        """The two files' bytes; ConfigError (one line) if either cannot be read or both are too big."""
        out = []
        for what, path in (("certificate", self.cert), ("key", self.key)):
            try:
                with open(path, "rb") as f:
                    out.append(f.read(MAX_PEM + 1))
            except OSError as exc:
                raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror or exc} — "
                                  f"give a PEM file with --tls-{'cert' if what == 'certificate' else 'key'}") from None
        if len(out[0]) + len(out[1]) > MAX_PEM:
            raise ConfigError(f"the TLS certificate and key together exceed {MAX_PEM // 1024} KiB — "
                              "give the server's chain without unrelated certificates")
        return out[0], out[1]

    def check(self, binary: str) -> None:
        """Load both as the gateway will (``anycore-gateway --check-tls``: PEM, a key rustls
        takes, and the certificate's own key); ConfigError with the gateway's one line."""
        self.read()
        try:
            done = subprocess.run([binary, "--check-tls", self.cert, self.key], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"cannot check the TLS files with {binary}: {exc}") from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ConfigError(f"--tls-cert {self.cert} --tls-key {self.key}: {reason}")


def python_refusal() -> str:
    return "--tls-cert needs --gateway native (the Python gateway serves plain HTTP; put a TLS proxy in front of it)"
