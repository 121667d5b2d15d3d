"""Running dcmtk's command-line tools (Debian package dcmtk) as real peers."""

from __future__ import annotations

import os


def dcmtk_env() -> dict[str, str]:
    """The environment for a dcmtk tool on loopback: TCP_NODELAY=1, or every image stalls
    ~40 ms on Nagle/delayed-ACK and a comparison measures that instead of the peer."""
    return dict(os.environ, TCP_NODELAY="1")
