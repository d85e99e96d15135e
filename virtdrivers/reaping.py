"""Crash-safe creation: every create leaves a trail that a later ``reap`` can follow.

A create that is killed (SIGKILL, an OOM kill, a power cut) cannot clean up after
itself, and what it made looks like nothing in particular: a VM without a
marker, a disk file no domain refers to. So a driver that declares
:attr:`~virtdrivers.Capability.REAP` follows one rule: **before its first backend
change**, a create writes an *operation token* into the first thing it makes (the
VM record's managed marker, the name of every disk file it makes), and it marks
the token complete as its last step. ``Driver.reap`` then lists, and removes,
what carries a token whose create is over without completing:

- its owner process is gone: same host, and no process with that PID and that
  start time exists (PIDs are reused; the start time tells a new process from
  the old one);
- or the token is older than a grace period: the owner ran on another host,
  where liveness cannot be checked, or it lives on but its create failed and
  could not clean up (the endpoint died mid-cleanup).

A create in progress in another process is therefore never reaped, and a disk
that any instance refers to never is.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from dataclasses import dataclass

__all__ = ["TOKEN_PATTERN", "CreateToken"]

#: ``vdc1-<id>-<pid>-<pid start>-<epoch>-<host>``: only characters that are safe in file
#: names, XML, VMX keys and REST fields, so every backend can carry it verbatim.
TOKEN_PATTERN = re.compile(r"vdc1-([0-9a-f]{12})-(\d+)-(\d+)-(\d+)-([A-Za-z0-9.]{1,64})")


def _host() -> str:
    """This host's name, reduced to the token's alphabet."""
    return re.sub(r"[^A-Za-z0-9.]", ".", socket.gethostname())[:64] or "localhost"


def _process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return 0  # exists but unreadable: treat as alive with an unknown start
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class CreateToken:
    """Who is creating what, written where the create's first backend change lands."""

    id: str
    pid: int
    pid_start: int
    started: int
    host: str

    @classmethod
    def new(cls) -> CreateToken:
        pid = os.getpid()
        return cls(uuid.uuid4().hex[:12], pid, _process_start(pid) or 0, int(time.time()), _host())

    def encode(self) -> str:
        return f"vdc1-{self.id}-{self.pid}-{self.pid_start}-{self.started}-{self.host}"

    __str__ = encode

    @classmethod
    def decode(cls, text: str | None) -> CreateToken | None:
        """The token ``text`` holds (it may be embedded in a file name), or None."""
        if not text:
            return None
        m = TOKEN_PATTERN.search(text)
        if m is None:
            return None
        return cls(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5))

    def owner_alive(self) -> bool | None:
        """Whether the creating process still runs: True, False, or None when it ran on another host."""
        if self.host != _host():
            return None
        start = _process_start(self.pid)
        if start is None:
            return False
        return start == 0 or self.pid_start == 0 or start == self.pid_start

    def abandoned(self, grace_s: float, now: float | None = None) -> bool:
        """Whether the create this token belongs to is over without having completed."""
        if self.owner_alive() is False:
            return True
        # Another host's process, or a live one whose create failed and could not clean up
        # (the endpoint died mid-cleanup): no create takes longer than the grace period.
        return (now if now is not None else time.time()) - self.started > grace_s
