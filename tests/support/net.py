"""Loopback ports: a free one for a service to bind, and waiting until one accepts."""

from __future__ import annotations

import socket

from tests.support.wait import wait_until


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Wait until host:port accepts connections, or fail after `timeout` s."""
    wait_until(lambda: accepts(port, host), timeout, f"{host}:{port} to accept connections")
