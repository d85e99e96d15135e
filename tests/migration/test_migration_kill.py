"""An orchestrator SIGKILLed at any step boundary is replaced by a fresh one that finishes or reverts.

For every backend and every flavour it supports, on a real SQLite file and on a
real PostgreSQL server: kill at
each boundary of the forward path and resume; kill there and revert instead;
and kill at each boundary of a revert and resume it. After each, the instance
exists exactly once, runs at most once, and sits where it must with the size
and power it must have; the store shows the migration finished, unlocked and
unowned, with each step recorded done exactly once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from virtdrivers.migration import FORWARD_STEPS, REVERT_STEPS


def _check_history(world: Any, migration_id: str, steps: tuple[str, ...], killed_owner_taken_over: bool) -> None:
    record = world.store.get(migration_id)
    assert record.owner is None, "a finished migration keeps no lease"
    events = world.store.events(migration_id)
    done = Counter(e.step for e in events if e.phase == "done")
    for step in steps:
        assert done[step] == 1, f"{step} recorded done {done[step]} times: {[(e.step, e.phase) for e in events]}"
    if killed_owner_taken_over:
        assert any(e.phase == "claimed" and e.detail.startswith("taken over") for e in events)


def _prepare(world: Any, scenario: Any) -> tuple[Any, Any]:
    instance = world.create(scenario)
    return instance, world.start(scenario, instance)


def test_killed_then_resumed_finishes(
    case: tuple[Any, Any], forward_boundary: tuple[str, str], make_world: Any, db_url: str, harness: Any
) -> None:
    backend, scenario = case
    world = make_world(backend, db_url)
    instance, record = _prepare(world, scenario)
    world.kill_at(record.id, forward_boundary)
    final = world.run(record.id)
    assert (final.status, final.error) == ("done", None)
    world.assert_placed(instance.name, harness.migrated(backend, scenario))
    _check_history(world, record.id, FORWARD_STEPS, killed_owner_taken_over=True)
    # The instance is free for its next migration.
    again = world.start(scenario, instance)
    assert again.status == "pending"


def test_killed_then_reverted_restores_the_original(
    case: tuple[Any, Any], forward_boundary: tuple[str, str], make_world: Any, db_url: str, harness: Any
) -> None:
    backend, scenario = case
    world = make_world(backend, db_url)
    instance, record = _prepare(world, scenario)
    world.kill_at(record.id, forward_boundary)
    if scenario.kind == "evacuate":
        world.set_node(backend.source, down=False)  # an evacuation is undone once its node is back
    final = world.run(record.id, revert=True)
    assert (final.status, final.error) == ("reverted", None)
    world.assert_placed(instance.name, harness.original(backend, scenario))
    _check_history(world, record.id, REVERT_STEPS, killed_owner_taken_over=True)


def test_killed_while_reverting_then_resumed_finishes_the_revert(
    case: tuple[Any, Any], revert_boundary: tuple[str, str], make_world: Any, db_url: str, harness: Any
) -> None:
    backend, scenario = case
    world = make_world(backend, db_url)
    instance, record = _prepare(world, scenario)
    on_revert = None
    if scenario.kind == "evacuate":
        # The evacuated node comes back, and the operator wants the instance home again.
        def on_revert(driver: Any) -> None:
            backend.fail_node(driver, backend.source, False)

    world.kill_at(record.id, revert_boundary, revert_at=("finish", "after"), on_revert=on_revert)
    final = world.run(record.id)
    assert (final.status, final.error) == ("reverted", None)
    world.assert_placed(instance.name, harness.original(backend, scenario))
    _check_history(world, record.id, REVERT_STEPS, killed_owner_taken_over=True)
