"""Offline guard for the reliability tests' subprocesses: refuse and record every non-loopback connection.

Python imports `sitecustomize` at start-up from the path, so putting this folder on PYTHONPATH guards a
CLI process *and* every Python process it starts with its environment (the ephemeral Prefect API server
is one). A refused attempt is appended to `$RELIABILITY_NET_LOG`; the tests assert that file stays empty.
Inert unless RELIABILITY_NET_LOG is set.
"""

import os
import socket

_LOG = os.environ.get("RELIABILITY_NET_LOG")


def _loopback(host) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host in ("localhost", "::1") or host.startswith("127.")


def _record(what) -> None:
    with open(_LOG, "a") as handle:
        handle.write(f"{os.getpid()} {what!r}\n")


def _guard(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            _record(("connect", address))
            raise ConnectionRefusedError(f"offline test: connection to {address} refused")
        return real(self, address)
    return connect


if _LOG:
    _real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _loopback(host):
            _record(("dns", host))
            raise socket.gaierror(f"offline test: name lookup of {host} refused")
        return _real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = _guard(socket.socket.connect)
    socket.socket.connect_ex = _guard(socket.socket.connect_ex)
    socket.getaddrinfo = getaddrinfo
