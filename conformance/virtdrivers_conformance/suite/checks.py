"""What the conformance tests use to read state back and wait for it: shared by every test module."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from virtdrivers import (
    DiskFormat,
    DiskInfo,
    DiskSpec,
    Driver,
    DriverError,
    EventType,
    Image,
    InstanceInfo,
    LifecycleEvent,
)

__all__ = [
    "agreed",
    "config_of",
    "disk_shape",
    "error_texts",
    "expected_shape",
    "image_for",
    "in_threads",
    "next_event",
    "other_nodes",
    "pick_target",
    "untyped",
    "up_nodes",
    "wait_for",
    "where",
]


def agreed(driver: Driver, instance_id: str) -> InstanceInfo:
    """The instance as ``get_instance`` reports it, after checking the bulk listing says the same."""
    got = driver.get_instance(instance_id)
    listed = [i for i in driver.list_instances() if i.id == instance_id]
    assert len(listed) == 1, f"list_instances shows {instance_id} {len(listed)} times"
    assert listed[0].model_dump() == got.model_dump(), "list_instances and get_instance disagree"
    return got


def up_nodes(driver: Driver) -> list[str]:
    return [n.name for n in driver.list_nodes() if n.state == "up"]


def other_nodes(driver: Driver, info: InstanceInfo) -> list[str]:
    return [n for n in up_nodes(driver) if n not in (info.node, info.host)]


def pick_target(driver: Driver, info: InstanceInfo) -> str:
    """A node to move to that is not the scheduler's obvious choice: the last other node, not the first."""
    others = other_nodes(driver, info)
    if not others:
        pytest.fail(f"the endpoint needs a second node that is up (instance is on {info.node!r})")
    return others[-1]


def where(info: InstanceInfo) -> tuple[str | None, str | None]:
    return info.node, info.host


def disk_shape(d: DiskInfo) -> tuple[int, DiskFormat | None, bool | None, str | None]:
    return d.size_gib, d.format, d.thin, d.label


def error_texts(exc: BaseException) -> Iterable[str]:
    """Every text an exception chain can show a person: messages, reprs and arguments."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (repr(a) for a in current.args)
        yield from (str(v) for v in vars(current).values()) if hasattr(current, "__dict__") else ()
        current = current.__cause__ or current.__context__


def next_event(
    events: queue.SimpleQueue[LifecycleEvent], instance_id: str, wanted: set[EventType], timeout: float
) -> LifecycleEvent | None:
    """The first event of ``instance_id`` whose type is in ``wanted``, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = events.get(timeout=0.1)
        except queue.Empty:
            continue
        if event.instance_id == instance_id and event.type in wanted:
            return event
    return None


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released together; each result or the exception it raised."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def expected_shape(driver: Driver, spec: DiskSpec) -> tuple[int, DiskFormat | None, bool | None, str | None]:
    return spec.size_gib, spec.format or driver.default_disk_format, spec.thin, spec.label


def config_of(driver: Driver, instance_id: str) -> tuple[int, int, tuple[int, ...]]:
    got = agreed(driver, instance_id)
    return got.vcpus, got.memory_mb, tuple(sorted(d.size_gib for d in got.disks))


def untyped(exc: BaseException) -> str | None:
    """Why ``exc`` is not an acceptable answer to hostile input, or None when it is."""
    if not isinstance(exc, DriverError):
        return f"untyped {type(exc).__name__}: {exc!r}"[:300]
    return None


def wait_for(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)


def image_for(driver: Driver) -> Image:
    images = driver.list_images()
    if not images:
        pytest.fail("the endpoint offers no image to boot from")
    return images[0]
