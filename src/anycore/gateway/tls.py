"""``--tls-cert``/``--tls-key``: the files, read and checked before the node starts.

The native gateway terminates TLS (rustls, ALPN h2 and http/1.1): the node reads the two
PEM files and sends them in ``dataplane.Tls``, again on SIGHUP. The Python gateway uses
Python's ``ssl`` (HTTP/1.1 only, ALPN http/1.1): ``server_context`` for its listener, and
on SIGHUP ``reload`` loads the files into that same context. Either way new connections
get the new certificate and open ones keep theirs (an SSL object copies the context's
certificate when it is made), and files that do not load leave the last one serving.
"""

from __future__ import annotations

import ssl
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

    def server_context(self) -> ssl.SSLContext:
        """The Python gateway's listener context; ConfigError (one line) if the files do not load."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(["http/1.1"])
        self._load(context)
        return context

    def reload(self, context: ssl.SSLContext) -> None:
        """Load the files again into ``context`` (checked on a scratch context first, so a
        bad pair never half-replaces the serving one); ConfigError if they do not load."""
        self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        self._load(context)

    def _load(self, context: ssl.SSLContext) -> None:
        self.read()
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"--tls-cert {self.cert} --tls-key {self.key}: OpenSSL cannot load them "
                              f"({str(reason).lower().replace('_', ' ')}) — give a PEM certificate chain and its own key") from None

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
