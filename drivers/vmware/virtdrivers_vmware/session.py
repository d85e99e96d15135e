"""Connecting to vCenter: TLS, login, re-login, bulk property retrieval and task waiting.

The only module that holds credentials. pyVmomi is imported when a session
connects, never at import time. Every backend call goes through
:meth:`Session.call`, which survives an expired or terminated session (vSphere
answers ``NotAuthenticated``; we log in again and repeat the call, which the
server never started) and a restarted server (the connection breaks; we log in
again on the next call, and repeat reads, never writes, at once).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from virtdrivers.errors import AuthenticationFailed, BackendUnavailable, DriverError, Timeout, redact
from virtdrivers_vmware import mapping
from virtdrivers_vmware._gc import collector_paused
from virtdrivers_vmware._sdk import sdk, smart_connect
from virtdrivers_vmware.settings import VSphereSettings

__all__ = ["Session", "VSphereSettings"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _connection_errors() -> tuple[type[BaseException], ...]:
    return (OSError, http.client.HTTPException, ssl.SSLError, socket.timeout)


def _pinned_context(host: str, port: int, thumbprint: str, timeout: float) -> ssl.SSLContext:
    """A verifying context that trusts exactly the certificate whose SHA-256 is ``thumbprint``.

    The certificate is fetched once unverified and compared with the pin; from then on
    every TLS handshake must present a certificate chaining to it, so a pinned
    connection is never an unverified one. Hostnames are not checked: the pin is the identity.
    """
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        probe.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise BackendUnavailable(f"vsphere: {host}:{port} presented no certificate")
    actual = hashlib.sha256(der).hexdigest()
    if actual != thumbprint:
        raise BackendUnavailable(
            f"vsphere: certificate of {host}:{port} does not match the pinned thumbprint (got sha256 {actual})"
        )
    ctx = ssl.create_default_context(cadata=ssl.DER_cert_to_PEM_cert(der))
    ctx.check_hostname = False
    return ctx


class Session:
    """One logged-in pyVmomi connection that re-establishes itself when it breaks."""

    def __init__(self, settings: VSphereSettings, *, name: str = "vsphere") -> None:
        self.settings = settings
        self.name = name
        self._lock = threading.RLock()
        self._si: Any = None
        self._content: Any = None
        self._views: dict[tuple[str, ...], Any] = {}
        #: Bumped at every login, so cached server-side objects of an old session are recognised.
        self.generation = 0

    # -- connecting -------------------------------------------------------------------------

    @property
    def secrets(self) -> list[str]:
        return self.settings.secrets()

    def _ssl_context(self) -> ssl.SSLContext:
        s = self.settings
        if s.insecure:
            log.warning(
                "vsphere: TLS certificate verification is OFF for %s:%s (insecure=True); "
                "set ca_file or thumbprint instead",
                s.host,
                s.port,
            )
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if s.thumbprint:
            return _pinned_context(s.host, s.port, s.thumbprint, s.http_timeout)
        return ssl.create_default_context(cafile=s.ca_file)

    def connect(self) -> None:
        with self._lock:
            if self._si is None:
                self._login()

    def _login(self) -> None:
        vim, _ = sdk()

        s = self.settings
        self._drop()
        try:
            si = smart_connect(
                host=s.host,
                port=s.port,
                user=s.user,
                pwd=s.password.get_secret_value(),
                sslContext=self._ssl_context(),
                httpConnectionTimeout=s.http_timeout,
                connectionPoolTimeout=-1,
            )
        except vim.fault.InvalidLogin as exc:
            raise AuthenticationFailed(
                redact(f"{self.name}: login as {s.user!r} refused: {mapping.fault_text(exc)}", self.secrets)
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise BackendUnavailable(
                f"{self.name}: certificate of {s.host}:{s.port} not trusted ({exc.verify_message}); "
                "give ca_file or thumbprint"
            ) from exc
        except DriverError:
            raise
        except _connection_errors() as exc:
            raise BackendUnavailable(
                redact(f"{self.name}: cannot reach {s.host}:{s.port}: {exc}", self.secrets)
            ) from exc
        except Exception as exc:  # pyVmomi raises vmodl faults and its own errors
            raise mapping.error_from_fault(exc, context=f"{self.name}: connect", secrets=self.secrets) from exc
        self._si = si
        self._content = si.RetrieveContent()
        self.generation += 1
        log.debug("vsphere: logged in to %s:%s (session %d)", s.host, s.port, self.generation)

    def _drop(self) -> None:
        """Forget the current connection without talking to the server (it may be gone)."""
        si, self._si, self._content = self._si, None, None
        self._views.clear()
        if si is not None:
            with contextlib.suppress(Exception):  # a dead pool has nothing left to drop
                si._stub.DropConnections()

    def close(self) -> None:
        with self._lock:
            if self._si is not None:
                try:
                    self._content.sessionManager.Logout()
                except Exception as exc:  # the server may be gone already: nothing to log out of
                    log.debug("vsphere: logout failed: %s", type(exc).__name__)
            self._drop()

    @property
    def content(self) -> Any:
        """The ServiceContent of the live session, logging in first if needed."""
        with self._lock:
            if self._si is None:
                self._login()
            return self._content

    # -- calling ----------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[Any], T], *, idempotent: bool = False, ref: str | None = None) -> T:
        """Run ``fn(content)`` against the server, translating vSphere faults into our errors.

        A ``NotAuthenticated`` answer means the call did nothing: log in again and repeat it.
        A broken connection drops the session; reads (``idempotent``) are repeated once on a
        fresh one, writes raise BackendUnavailable because they may or may not have happened.
        """
        vim, vmodl = sdk()

        for attempt in (1, 2):
            content = self.content
            generation = self.generation
            try:
                return fn(content)
            except vim.fault.NotAuthenticated as exc:
                if attempt == 2:
                    raise mapping.error_from_fault(exc, context=f"{self.name}: {what}", secrets=self.secrets) from exc
                log.info("vsphere: session expired during %s; logging in again", what)
                self._relogin(generation)
            except _connection_errors() as exc:
                self._relogin_later(generation)
                if attempt == 2 or not idempotent:
                    raise BackendUnavailable(
                        redact(f"{self.name}: connection lost during {what}: {type(exc).__name__}: {exc}", self.secrets)
                    ) from exc
                log.info("vsphere: connection lost during %s; reconnecting", what)
            except DriverError:
                raise
            except vmodl.fault.ManagedObjectNotFound as exc:
                # vcsim answers a dead session's calls anonymously: our session's views are then
                # "not found" where vCenter would say NotAuthenticated. Ask which it is.
                if attempt == 1 and not self._alive(content):
                    log.info("vsphere: session gone during %s; logging in again", what)
                    self._relogin(generation)
                    continue
                raise mapping.error_from_fault(
                    exc, context=f"{self.name}: {what}", secrets=self.secrets, ref=ref
                ) from exc
            except Exception as exc:
                if hasattr(exc, "_wsdlName") or type(exc).__name__.startswith(("vim.", "vmodl.")):
                    raise mapping.error_from_fault(
                        exc, context=f"{self.name}: {what}", secrets=self.secrets, ref=ref
                    ) from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _alive(self, content: Any) -> bool:
        try:
            return content.sessionManager.currentSession is not None
        except Exception:  # unreachable or refused: either way not a session to keep using
            return False

    def _relogin(self, generation: int) -> None:
        with self._lock:
            if self.generation == generation:  # another thread may have done it already
                self._login()

    def _relogin_later(self, generation: int) -> None:
        with self._lock:
            if self.generation == generation:
                self._drop()

    # -- datastore files ----------------------------------------------------------------------

    def read_datastore_tail(self, datacenter: str, datastore: str, path: str, max_bytes: int) -> bytes | None:
        """The last ``max_bytes`` of a datastore file over vCenter's ``/folder`` HTTP access, with
        this session's cookie and TLS settings; None when the file does not exist (yet)."""
        import http.client
        import urllib.parse

        s = self.settings
        with self._lock:
            if self._si is None:
                self._login()
            cookie = self._si._stub.cookie
        query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
        url = f"/folder/{urllib.parse.quote(path)}?{query}"
        conn = http.client.HTTPSConnection(s.host, port=s.port, context=self._ssl_context(), timeout=s.http_timeout)
        try:
            conn.request("GET", url, headers={"Cookie": cookie, "Range": f"bytes=-{max_bytes}"})
            response = conn.getresponse()
            body = response.read()
        except _connection_errors() as exc:
            raise BackendUnavailable(f"{self.name}: reading {path!r} from [{datastore}] failed: {exc}") from exc
        finally:
            conn.close()
        if response.status == 404:
            return None
        if response.status == 416:  # an empty file has no last byte to range over
            return b""
        if response.status not in (200, 206):
            raise BackendUnavailable(f"{self.name}: reading {path!r} from [{datastore}]: HTTP {response.status}")
        return body[-max_bytes:]

    # -- bulk reads --------------------------------------------------------------------------

    def view(self, content: Any, types: Sequence[str]) -> Any:
        """A ContainerView over the whole inventory for ``types``, created once per login."""
        vim, _ = sdk()

        key = tuple(types)
        with self._lock:
            view = self._views.get(key)
            if view is None:
                view = content.viewManager.CreateContainerView(
                    content.rootFolder, [getattr(vim, t) for t in types], True
                )
                self._views[key] = view
            return view

    def retrieve(
        self, content: Any, view: Any, props: dict[str, Sequence[str]], *, page_size: int | None = None
    ) -> list[Any]:
        """Every object in ``view`` with the given properties per type: one round trip per page."""
        vim, vmodl = sdk()

        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[pc.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)],
                )
            ],
            propSet=[pc.PropertySpec(type=getattr(vim, t), pathSet=list(paths)) for t, paths in props.items()],
        )
        return self.retrieve_specs(content, [spec], page_size)

    def retrieve_objects(
        self, content: Any, objs: Iterable[Any], paths: Sequence[str], *, report_missing: bool = False
    ) -> list[Any]:
        """Properties of the given objects (all of one type): one round trip per page.

        ``report_missing``: an object deleted meanwhile is left out of the answer instead of
        failing the whole retrieval with ManagedObjectNotFound.
        """
        _, vmodl = sdk()

        pc = vmodl.query.PropertyCollector
        objs = list(objs)
        if not objs:
            return []
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=o, skip=False) for o in objs],
            propSet=[pc.PropertySpec(type=type(objs[0]), pathSet=list(paths))],
            reportMissingObjectsInResults=report_missing or None,
        )
        return self.retrieve_specs(content, [spec], None)

    def retrieve_specs(self, content: Any, specs: list[Any], page_size: int | None) -> list[Any]:
        """RetrievePropertiesEx for ``specs``, following continuation tokens page by page."""
        _, vmodl = sdk()

        collector = content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=page_size or self.settings.page_size)
        objects: list[Any] = []
        with collector_paused():
            result = collector.RetrievePropertiesEx(specs, options)
            while result is not None:
                objects.extend(result.objects or ())
                token = result.token
                result = collector.ContinueRetrievePropertiesEx(token) if token else None
        return objects

    # -- waiting -----------------------------------------------------------------------------

    def _long_poll(self, remaining: float) -> int:
        """Seconds one WaitForUpdatesEx may block: within the deadline, and well within the socket timeout.

        The server holds a long poll open for up to maxWaitSeconds; a poll longer than
        ``http_timeout`` would have the socket give up on a healthy server.
        """
        return max(1, min(int(remaining) or 1, 60, int(self.settings.http_timeout / 2) or 1))

    def wait_for_task(self, content: Any, task: Any, *, what: str, timeout: float | None = None) -> Any:
        """Wait for a vSphere task through the PropertyCollector; its result, or our error for its fault.

        One property read answers a task that is already done (vcsim runs most tasks inside
        the call). Otherwise a private collector's WaitForUpdatesEx blocks until the task's
        state changes, so nothing polls on a timer.
        """
        deadline = time.monotonic() + (timeout or self.settings.task_timeout)
        info = self._task_info(content, task, what)
        if info.get("info.state") not in ("success", "error"):
            info = self._wait_updates(content, task, ("info.state", "info.error", "info.result"), deadline, what)
        if info.get("info.state") == "error":
            fault = info.get("info.error")
            inner = getattr(fault, "fault", None) or fault
            if inner is None:
                raise DriverError(f"{self.name}: {what} failed")
            error = mapping.error_from_fault(inner, context=f"{self.name}: {what}", secrets=self.secrets)
            # The task's fault is vSphere's exception object: chain it as if the call had raised it.
            raise error from (inner if isinstance(inner, BaseException) else None)
        return info.get("info.result")

    def _task_info(self, content: Any, task: Any, what: str) -> dict[str, Any]:
        _, vmodl = sdk()

        try:
            objs = self.retrieve_objects(content, [task], ("info.state", "info.error", "info.result"))
        except vmodl.fault.ManagedObjectNotFound as exc:
            raise BackendUnavailable(
                f"{self.name}: task of {what} vanished from the server (was it restarted?)"
            ) from exc
        return mapping.props_of(objs[0]) if objs else {}

    def _wait_updates(self, content: Any, obj: Any, paths: Sequence[str], deadline: float, what: str) -> dict[str, Any]:
        """Block on a private PropertyCollector until ``obj`` reaches a final task state or ``deadline``."""
        _, vmodl = sdk()

        pcls = vmodl.query.PropertyCollector
        collector = content.propertyCollector.CreatePropertyCollector()
        try:
            spec = pcls.FilterSpec(
                objectSet=[pcls.ObjectSpec(obj=obj, skip=False)],
                propSet=[pcls.PropertySpec(type=type(obj), pathSet=list(paths))],
            )
            collector.CreateFilter(spec, partialUpdates=False)
            version = ""
            state: dict[str, Any] = {}
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"{self.name}: {what} did not finish in time")
                options = pcls.WaitOptions(maxWaitSeconds=self._long_poll(remaining))
                try:
                    update = collector.WaitForUpdatesEx(version, options)
                except vmodl.fault.ManagedObjectNotFound as exc:
                    raise BackendUnavailable(f"{self.name}: task of {what} vanished from the server") from exc
                if update is None:
                    continue
                version = update.version
                for fs in update.filterSet or ():
                    for ou in fs.objectSet or ():
                        if ou.kind == "leave":
                            raise BackendUnavailable(f"{self.name}: task of {what} vanished from the server")
                        for change in ou.changeSet or ():
                            state[change.name] = change.val
                if state.get("info.state") in ("success", "error"):
                    return state
        finally:
            try:
                collector.DestroyPropertyCollector()
            except Exception as exc:  # the session may be gone; the server drops it with the session
                log.debug("vsphere: DestroyPropertyCollector failed: %s", type(exc).__name__)

    def wait_for_power(self, content: Any, vm: Any, wanted: str, *, timeout: float, what: str) -> bool:
        """Wait until ``vm``'s power state is ``wanted``; False when ``timeout`` passes first."""
        _, vmodl = sdk()

        pcls = vmodl.query.PropertyCollector
        deadline = time.monotonic() + timeout
        collector = content.propertyCollector.CreatePropertyCollector()
        try:
            spec = pcls.FilterSpec(
                objectSet=[pcls.ObjectSpec(obj=vm, skip=False)],
                propSet=[pcls.PropertySpec(type=type(vm), pathSet=["runtime.powerState"])],
            )
            collector.CreateFilter(spec, partialUpdates=False)
            version = ""
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                options = pcls.WaitOptions(maxWaitSeconds=self._long_poll(remaining))
                update = collector.WaitForUpdatesEx(version, options)
                if update is None:
                    continue
                version = update.version
                for fs in update.filterSet or ():
                    for ou in fs.objectSet or ():
                        for change in ou.changeSet or ():
                            if change.name == "runtime.powerState" and change.val == wanted:
                                return True
        finally:
            try:
                collector.DestroyPropertyCollector()
            except Exception as exc:
                log.debug("vsphere: DestroyPropertyCollector failed: %s", type(exc).__name__)
