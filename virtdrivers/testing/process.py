"""Stopping a child process we started, politely first and by its PID only."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any

__all__ = ["stop_child"]


def stop_child(proc: subprocess.Popen[Any], *, grace: float = 5.0) -> None:
    """Close the child's stdin if we hold it (simulators exit when it closes), then SIGTERM, then SIGKILL.

    Each step waits ``grace`` seconds. Only ``proc`` is signalled, never a process
    found by name, so a user's own simulator on the same machine is never touched.
    """
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
