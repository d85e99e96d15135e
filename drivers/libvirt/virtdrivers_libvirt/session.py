"""Connections to libvirt: the event loop, opening, keepalive, reconnecting, error translation.

This is the only module besides :mod:`.daemon` and the driver's lazy imports that touches the
libvirt SDK. Three process-wide facts of libvirt shape it:

- libvirt delivers events, keepalives and close notifications only through a registered event
  loop, and the embedded QEMU driver does not even open without one. We register libvirt's
  default implementation once per process and run it in one thread while any session needs it.
- A killed daemon shows up as a closed connection: a call in flight fails at once and the close
  callback fires. Keepalive catches a daemon that hangs instead of dying. We then reconnect in
  the background (and on the next call), so event callbacks come back without anyone asking.
- QEMU processes started in-process (``qemu:///embed``) are orphaned by design; if PID 1 reaps
  them late, libvirt waits about 1.6 s on every destroy. A :class:`ChildReaper` makes this
  process their subreaper and reaps them promptly.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from virtdrivers.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    Conflict,
    DriverError,
    InstanceNotFound,
    InvalidSpec,
    InvalidState,
    NotFound,
    NotSupported,
    Timeout,
    redact,
)

if TYPE_CHECKING:
    import libvirt

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called on the event-loop thread with (uuid, name, event, detail) for every lifecycle event.
LifecycleHandler = Callable[[str, str, int, int], None]


def _libvirt() -> Any:
    import libvirt

    return libvirt


class _ProcessThread:
    """A thread shared by the whole process, run while anyone holds a reference to it."""

    _lock = threading.Lock()
    _users = 0
    _thread: threading.Thread | None = None
    _stop = threading.Event()

    @classmethod
    def _after_fork_in_child(cls) -> None:
        # A forked child has none of its parent's threads, and a lock a parent thread held at the
        # fork would stay held forever: start from nothing, so the child runs a thread of its own.
        # (The subreaper attribute is not inherited across fork either.)
        cls._lock = threading.Lock()
        cls._users = 0
        cls._thread = None
        cls._stop = threading.Event()


class EventLoop(_ProcessThread):
    """libvirt's default event loop, run by one thread while anyone holds a reference."""

    _lock = threading.Lock()
    _users = 0
    _registered = False
    _thread: threading.Thread | None = None
    _stop = threading.Event()
    #: Set in a child forked while the parent's loop ran: libvirt's loop (GLib's default main
    #: context) stays owned by a thread the child does not have, so every iteration would block.
    _forked_while_running = False

    @classmethod
    def acquire(cls) -> None:
        lv = _libvirt()
        if cls._forked_while_running:
            raise DriverError(
                "libvirt: this process was forked while its parent ran libvirt's event loop, which cannot run"
                " again in the child; start workers with the 'spawn' or 'forkserver' method, or fork before"
                " any libvirt driver connects (or after every one has closed)"
            )
        with cls._lock:
            if not cls._registered:
                # Errors become exceptions; without this libvirt also prints each one to stderr.
                lv.registerErrorHandler(lambda _ctx, _err: None, None)
                lv.virEventRegisterDefaultImpl()
                cls._registered = True
            cls._users += 1
            if cls._thread is None:
                cls._stop = threading.Event()
                cls._thread = threading.Thread(
                    target=cls._run, args=(cls._stop,), name="libvirt-event-loop", daemon=True
                )
                cls._thread.start()

    @classmethod
    def release(cls) -> None:
        lv = _libvirt()
        with cls._lock:
            cls._users -= 1
            if cls._users > 0 or cls._thread is None:
                return
            thread, cls._thread = cls._thread, None
            cls._stop.set()

            # A zero timeout wakes the loop out of poll() so it sees the stop flag.
            def wake(timer: int, _opaque: object) -> None:
                lv.virEventRemoveTimeout(timer)

            lv.virEventAddTimeout(0, wake, None)
        thread.join(timeout=5)

    @classmethod
    def _after_fork_in_child(cls) -> None:
        cls._forked_while_running = cls._forked_while_running or cls._thread is not None
        super()._after_fork_in_child()

    @staticmethod
    def _run(stop: threading.Event) -> None:
        lv = _libvirt()
        while not stop.is_set():
            if lv.virEventRunDefaultImpl() < 0:
                log.warning("libvirt event loop iteration failed")


class ChildReaper(_ProcessThread):
    """Makes this process the subreaper of the QEMU processes it starts, and reaps them.

    Our process then has two kinds of QEMU children: orphaned guests (nobody will wait for
    them) and short-lived QEMU processes libvirt forks itself (capability probes), which
    libvirt waits for at once. Reaping one of the latter makes libvirt fail with ECHILD, so a
    zombie is reaped only once it has stayed unreaped for :attr:`grace` seconds, and only if its
    command name starts with ``qemu`` (children that ``subprocess`` waits for are left alone).
    """

    _PR_SET_CHILD_SUBREAPER = 36
    grace = 0.1
    _lock = threading.Lock()
    _users = 0
    _thread: threading.Thread | None = None
    _stop = threading.Event()

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.prctl(cls._PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                    log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: destroy will be slower")
                cls._stop = threading.Event()
                cls._thread = threading.Thread(target=cls._run, args=(cls._stop,), name="qemu-reaper", daemon=True)
                cls._thread.start()
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users > 0 or cls._thread is None:
                return
            thread, cls._thread = cls._thread, None
            cls._stop.set()
            ctypes.CDLL(None, use_errno=True).prctl(cls._PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        thread.join(timeout=5)

    @staticmethod
    def _children() -> list[int]:
        pids: list[int] = []
        with contextlib.suppress(OSError):
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
                    pids += [int(p) for p in f.read().split()]
        return pids

    @classmethod
    def _qemu_zombies(cls) -> set[int]:
        found = set()
        for pid in cls._children():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            end = stat.rfind(")")
            comm, state = stat[stat.find("(") + 1 : end], stat[end + 2 : end + 3]
            if state == "Z" and comm.startswith("qemu"):
                found.add(pid)
        return found

    @classmethod
    def _run(cls, stop: threading.Event) -> None:
        # Polling: a thread cannot take SIGCHLD, and a blocking wait would steal the exit
        # status of children that libvirt or subprocess wait for.
        first_seen: dict[int, float] = {}
        while not stop.wait(0.02):
            now = time.monotonic()
            zombies = cls._qemu_zombies()
            first_seen = {pid: first_seen.get(pid, now) for pid in zombies}
            for pid, since in list(first_seen.items()):
                if now - since >= cls.grace:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                    del first_seen[pid]


def _after_fork_in_child() -> None:
    EventLoop._after_fork_in_child()
    ChildReaper._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class EmbedKeeper:
    """One shared connection per embedded URI, kept open for the life of the process.

    libvirt registers the embedded QEMU driver anew on every ``open`` of a ``qemu:///embed``
    URI, and its driver table has room for about 16 registrations per process: the 17th open
    failed with "Too many drivers, cannot register QEMU" (measured, libvirt 9.0), however many
    connections were still open. So all sessions on an embedded URI share one connection
    (libvirt connections are thread-safe), and drivers may come and go any number of times.
    Closing it would give nothing back: libvirt keeps the root's lock (``run/qemu/driver.pid``)
    until the process exits anyway, so one process at a time uses an embedded root.

    libvirt-python also refuses a second lifecycle callback on one connection ("event callback
    already tracked": it passes the same C callback and opaque each time), so the keeper
    registers one and fans each event out to the sessions subscribed to that URI.
    """

    _lock = threading.Lock()
    _held: dict[str, Any] = {}
    #: Guards the subscribers only; taken on libvirt's event thread, never held across a call.
    _subscribers_lock = threading.Lock()
    _subscribers: dict[str, dict[int, Callable[..., None]]] = {}
    _next_token = 0

    @classmethod
    def connection(cls, uri: str) -> Any:
        """The shared connection to ``uri``, opened the first time; raises libvirtError."""
        lv = _libvirt()
        with cls._lock:
            conn = cls._held.get(uri)
            if conn is not None:
                return conn
            EventLoop.acquire()  # for good: the embedded driver does not even open without it
            try:
                conn = lv.open(uri)
                conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cls._fan_out, uri)
            except BaseException:
                EventLoop.release()
                raise
            cls._held[uri] = conn
            return conn

    @classmethod
    def holds(cls, uri: str) -> bool:
        """Whether this process has the embedded root of ``uri`` (and so no other process can)."""
        with cls._lock:
            return uri in cls._held

    @classmethod
    def subscribe(cls, uri: str, handler: Callable[..., None]) -> int:
        """Call ``handler(conn, dom, event, detail, opaque)`` for each lifecycle event on ``uri``."""
        with cls._subscribers_lock:
            cls._next_token += 1
            cls._subscribers.setdefault(uri, {})[cls._next_token] = handler
            return cls._next_token

    @classmethod
    def unsubscribe(cls, uri: str, token: int) -> None:
        with cls._subscribers_lock:
            cls._subscribers.get(uri, {}).pop(token, None)

    @classmethod
    def _fan_out(cls, conn: object, dom: Any, event: int, detail: int, uri: str) -> None:
        with cls._subscribers_lock:
            handlers = list(cls._subscribers.get(uri, {}).values())
        for handler in handlers:
            handler(conn, dom, event, detail, None)  # Session._lifecycle logs its own failures


# -- errors ------------------------------------------------------------------------------------

#: libvirt virErrorNumber -> the contract's error; one table, so a code can have only one meaning.
_BY_CODE: dict[int, type[DriverError]] = {
    42: InstanceNotFound,
    **dict.fromkeys((72, 50, 49, 80), NotFound),
    **dict.fromkeys((3, 84, 74), NotSupported),
    **dict.fromkeys((27, 35, 67, 8), InvalidSpec),
    **dict.fromkeys((55, 81), InvalidState),
    **dict.fromkeys((28, 90, 87), Conflict),
    **dict.fromkeys((38, 39, 5, 6), BackendUnavailable),
    **dict.fromkeys((45, 79, 94), AuthenticationFailed),
    **dict.fromkeys((68, 86), Timeout),
}


def translate_error(
    exc: Exception, *, ref: str = "", alive: bool = True, secrets: list[str] | None = None
) -> DriverError:
    """One libvirt error as a virtdrivers error; callers ``raise ... from exc``.

    A call that fails on a connection that is no longer alive is BackendUnavailable whatever
    libvirt said, so a killed daemon never looks like a bad request.
    """
    code = exc.get_error_code() if hasattr(exc, "get_error_code") else None
    message = redact(str(exc), secrets or [])
    if not alive:
        return BackendUnavailable(f"libvirt connection lost: {message}")
    cls = _BY_CODE.get(code) if code is not None else None
    if cls is InstanceNotFound:
        return InstanceNotFound(ref, message)
    if cls is not None:
        return cls(message)
    if code == 9 and "already exists" in message:
        return Conflict(message)
    return DriverError(message)


# -- sessions ----------------------------------------------------------------------------------


class Session:
    """One connection to one libvirt URI, reopened whenever it is found dead.

    ``on_lifecycle`` is registered for domain lifecycle events on every connection this
    session opens, so a reconnect restores it. ``on_reconnect`` runs after each reopen (the
    driver drops caches there, since the daemon may have changed while we were away).
    """

    def __init__(
        self,
        uri: str,
        *,
        on_lifecycle: LifecycleHandler | None = None,
        on_reconnect: Callable[[], None] | None = None,
        keepalive: tuple[int, int] = (5, 3),
        reconnect: bool = True,
        credentials: tuple[str, str] | None = None,
        embedded: bool = False,
    ) -> None:
        self.uri = uri
        self._on_lifecycle = on_lifecycle
        self._on_reconnect = on_reconnect
        self._keepalive = keepalive
        self._reconnect = reconnect
        self._credentials = credentials
        self._embedded = embedded
        #: Guards the connection. Held across libvirt calls, so no libvirt callback may take it.
        self._lock = threading.RLock()
        #: Guards starting and stopping the reconnector only; never held across a libvirt call.
        self._spawn_lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._closed = True
        self._reconnector: threading.Thread | None = None
        self._wake = threading.Event()
        #: Incremented on every (re)open, so callers can tell a fresh connection.
        self.generation = 0
        self.reconnects = 0

    def _secrets(self) -> list[str]:
        return [self._credentials[1]] if self._credentials else []

    # -- open and close --------------------------------------------------------------------

    def open(self, *, required: bool = True) -> None:
        """Connect. With ``required=False`` a peer that cannot be reached now is not an error:
        the session keeps trying in the background, and each call tries again."""
        with self._lock:
            if not self._closed:
                return
            EventLoop.acquire()
            if self._embedded:
                ChildReaper.acquire()
            self._closed = False
            try:
                self._open_locked()
                return
            except BackendUnavailable:
                if required or not self._reconnect:
                    self.close()
                    raise
                log.warning("libvirt: %s is unreachable; will keep trying", redact(self.uri))
            except BaseException:
                self.close()
                raise
        self._closed_by_peer(None, -1, None)

    def _open_locked(self) -> libvirt.virConnect:
        lv = _libvirt()
        try:
            if self._embedded:
                # No credentials: an in-process driver has no one to authenticate to.
                conn = EmbedKeeper.connection(self.uri)
            elif self._credentials is not None:
                user, password = self._credentials

                def answer(creds: list[list[Any]], _opaque: object) -> int:
                    for cred in creds:
                        if cred[0] == lv.VIR_CRED_AUTHNAME:
                            cred[4] = user
                        elif cred[0] == lv.VIR_CRED_PASSPHRASE:
                            cred[4] = password
                    return 0

                auth = [[lv.VIR_CRED_AUTHNAME, lv.VIR_CRED_PASSPHRASE], answer, None]
                conn = lv.openAuth(self.uri, auth, 0)
            else:
                conn = lv.open(self.uri)
        except lv.libvirtError as exc:
            code = exc.get_error_code()
            message = redact(str(exc), self._secrets())
            # The test driver says "Missing authentication credentials" (invalid argument) when
            # a password is demanded and none was given: that is a refusal too.
            refused = _BY_CODE.get(code) is AuthenticationFailed or "authentication" in message.lower()
            where = redact(self.uri)
            if refused:
                raise AuthenticationFailed(f"libvirt refused the credentials for {where}: {message}") from exc
            raise BackendUnavailable(f"cannot connect to {where}: {message}") from exc
        # Refused by in-process drivers (test, embed), which cannot hang on a peer anyway; and
        # a shared embedded connection must not carry one session's close callback.
        if not self._embedded:
            with contextlib.suppress(lv.libvirtError):
                conn.setKeepAlive(*self._keepalive)
            with contextlib.suppress(lv.libvirtError):
                conn.registerCloseCallback(self._closed_by_peer, None)
        if self._on_lifecycle is not None and self._embedded:
            self._callback_id = EmbedKeeper.subscribe(self.uri, self._lifecycle)
        elif self._on_lifecycle is not None:
            try:
                self._callback_id = conn.domainEventRegisterAny(
                    None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
                )
            except lv.libvirtError as exc:  # the peer went away again at once
                self._let_go(conn, None)
                message = redact(str(exc), self._secrets())
                raise BackendUnavailable(f"lost {self.uri} while subscribing to events: {message}") from exc
        first = self.generation == 0
        self._conn = conn
        self.generation += 1
        if not first:
            self.reconnects += 1
            if self._on_reconnect is not None:
                self._on_reconnect()
        return conn

    def close(self) -> None:
        """Close the connection and stop the reconnector. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
        with self._spawn_lock:
            thread, self._reconnector = self._reconnector, None
            self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if conn is not None:
            self._let_go(conn, self._callback_id)
        self._callback_id = None
        if self._embedded:
            ChildReaper.release()
        EventLoop.release()

    # -- using the connection ----------------------------------------------------------------

    def connection(self) -> libvirt.virConnect:
        """A live connection: the current one, or a new one if the peer went away."""
        with self._lock:
            if self._closed:
                raise BackendUnavailable(f"not connected to {self.uri}")
            conn = self._conn
            if conn is not None and self._alive(conn):
                return conn
            self._drop_locked()
            return self._open_locked()

    def call(self, fn: Callable[[libvirt.virConnect], T], *, ref: str = "") -> T:
        """Run ``fn`` on a live connection, translating libvirt errors."""
        lv = _libvirt()
        conn = self.connection()
        try:
            return fn(conn)
        except lv.libvirtError as exc:
            alive = self._alive(conn)
            if not alive:
                with self._lock:
                    if self._conn is conn:
                        self._drop_locked()
            raise translate_error(exc, ref=ref, alive=alive, secrets=self._secrets()) from exc

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except Exception:
            return False

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        callback_id, self._callback_id = self._callback_id, None
        if conn is not None:
            self._let_go(conn, callback_id)

    def _let_go(self, conn: libvirt.virConnect, callback_id: int | None) -> None:
        """Stop using a connection. A shared embedded one stays open for the other sessions:
        only this session's event callback leaves it."""
        lv = _libvirt()
        if self._embedded:
            if callback_id is not None:
                EmbedKeeper.unsubscribe(self.uri, callback_id)
            return
        if callback_id is not None:
            with contextlib.suppress(lv.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
        with contextlib.suppress(lv.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(lv.libvirtError):
            conn.close()

    # -- callbacks (event-loop thread) ---------------------------------------------------------

    def _lifecycle(self, _conn: object, dom: Any, event: int, detail: int, _opaque: object) -> None:
        if self._on_lifecycle is not None:
            try:
                self._on_lifecycle(dom.UUIDString(), dom.name(), event, detail)
            except Exception:  # a bug in a handler must not kill libvirt's event loop
                log.exception("lifecycle handler failed")

    def _closed_by_peer(self, _conn: object, reason: int, _opaque: object) -> None:
        """Start the reconnector. libvirt calls this holding its close-callback lock, from any
        thread (often a caller's, in the middle of an RPC), so it must not wait for ``_lock``:
        a thread holding ``_lock`` may be unregistering this very callback."""
        log.info("libvirt connection to %s closed (reason %d)", self.uri, reason)
        if not self._reconnect:
            return
        with self._spawn_lock:
            if self._closed or (self._reconnector is not None and self._reconnector.is_alive()):
                return
            self._wake = threading.Event()
            self._reconnector = threading.Thread(
                target=self._reconnect_loop, args=(self._wake,), name="libvirt-reconnect", daemon=True
            )
            self._reconnector.start()

    def _reconnect_loop(self, wake: threading.Event) -> None:
        """Reopen in the background so event subscriptions come back without a caller."""
        delay = 0.05
        while not wake.is_set():
            with self._lock:
                if self._closed:
                    return
                try:
                    self.connection()
                    return
                except DriverError:
                    pass
            # Backoff while the daemon is down: this waits for a peer, not for a state.
            wake.wait(delay)
            delay = min(delay * 2, 1.0)
