"""The suite's own strength: every broken driver in ``mutants/`` must be caught.

Each mutant (``mutants/vd_mutants``) is the reference fake with one realistic bug,
installed out of tree as its own ``virtdrivers.drivers`` entry point and run by
the real parity CLI on the fake's embedded endpoint, beside the plain fake as a
control. A mutant is caught when the feature its docstring names gets a cell that
is neither ``passes`` nor ``not_declared``, or when its column cannot run and that
is where its bug shows (connect, secrets, or an error that names the feature). The
control must pass every cell, so catching never comes from a suite that fails
everything.

The score (caught/total, each survivor with its intended feature) is printed and
written to ``build/mutation/score.json``. The default run takes a representative
half, chosen so every area of the contract and nearly every feature is in it and
the mutants that cost a long wait (a 60 s shutdown timeout, a 30 s wait for a
missing event) are not; ``-m slow`` runs all of them, as does ``./dev bench mutation``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from virtdrivers_conformance.features import FEATURES

MUTANTS_DIR = Path(__file__).with_name("mutants")
SCORE_FILE = Path(__file__).resolve().parents[2] / "build" / "mutation" / "score.json"

#: The representative half the default run takes: every area (module), every feature but a few
#: whose mutants are cheap look-alikes of ones here, and none of the mutants that cost a long wait.
DEFAULT = frozenset(
    {
        # lifecycle
        "mut-connect-ignores-password",
        "mut-repr-leaks-password",
        "mut-secret-in-error",
        "mut-list-wrong-node",
        "mut-list-stale-power",
        "mut-get-keyerror",
        "mut-create-leaks-on-failure",
        "mut-create-race",
        "mut-create-ignores-node",
        "mut-disk-size-units",
        "mut-metadata-escaped",
        "mut-duplicate-conflict",
        "mut-destroy-keeps-disks",
        # power
        "mut-power-off-stale-info",
        "mut-reboot-leaves-stopped",
        "mut-pause-undeclared",
        "mut-unpause-running-accepted",
        "mut-suspend-stopped-swallowed",
        "mut-graceful-never-forces",
        # resize, storage, formats
        "mut-resize-only-one-field",
        "mut-resize-resets-memory",
        "mut-attach-wrong-format",
        "mut-detach-wrong-disk",
        "mut-detach-keeps-storage",
        "mut-vhdx-as-vmdk",
        # snapshots
        "mut-revert-newest",
        "mut-list-snapshots-all",
        "mut-memory-snapshot-ignored",
        # migration
        "mut-live-migrate-ignores-node",
        "mut-live-migrate-to-down-node",
        "mut-live-migrate-unknown-valueerror",
        "mut-cold-migrate-not-persisted",
        "mut-evacuate-split-brain",
        # cluster
        "mut-nodes-fqdn",
        "mut-host-resources-ignores-node",
        "mut-host-resources-no-usage",
        "mut-ha-priority-ignored",
        "mut-failover-no-move",
        # pets and events
        "mut-adopt-restarts",
        "mut-unmanaged-lists-managed",
        "mut-events-after-close",
        "mut-events-migrated-old-node",
        # workloads
        "mut-user-data-stripped",
        "mut-detach-nic-noop",
        "mut-ticket-in-url",
        "mut-failed-image-create-leaks",
        "mut-cow-writes-the-image",
    }
)


def _load_harness() -> ModuleType:
    """The harness module from the source tree, without importing (or registering) any mutant here."""
    name = "vd_mutants_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MUTANTS_DIR / "vd_mutants" / "harness.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


harness = _load_harness()


@pytest.fixture(scope="module")
def mutant_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env: dict[str, str] = harness.install(tmp_path_factory.mktemp("mutants-site"))
    return env


@pytest.fixture(scope="module")
def catalogue(mutant_env: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = harness.catalogue(mutant_env)
    return rows


def _score(names: list[str], env: dict[str, str], outdir: Path, selection: str) -> dict[str, Any]:
    rows = {r["name"]: r for r in harness.catalogue(env)}
    matrix = harness.run_matrix(names, env, outdir)
    result: dict[str, Any] = harness.score(matrix, [rows[n] for n in names])
    result["selection"] = selection
    print(harness.render(result))
    SCORE_FILE.parent.mkdir(parents=True, exist_ok=True)
    SCORE_FILE.write_text(json.dumps(result, indent=1))
    return result


def _assert_all_caught(result: dict[str, Any]) -> None:
    for name, control in result["controls"].items():
        assert control["all_pass"], f"the control {name} must pass every cell: {control}"
    survivors = "\n".join(f"  {s['name']} ({s['feature']}, {s['verdict']}): {s['bug']}" for s in result["survivors"])
    assert not result["survivors"], (
        f"mutation score {result['caught']}/{result['total']}; survivors (see {SCORE_FILE}):\n{survivors}"
    )


def test_the_catalogue_is_complete_and_well_formed(catalogue: list[dict[str, Any]]) -> None:
    names = [r["name"] for r in catalogue]
    assert len(names) >= 45
    assert len(set(names)) == len(names), "mutant names must be unique"
    declared = tomllib.loads((MUTANTS_DIR / "pyproject.toml").read_text())["project"]["entry-points"]
    entry_points = declared["virtdrivers.drivers"]
    assert entry_points == {r["name"]: r["target"] for r in catalogue}, "pyproject entry points != mutant classes"
    assert all(r["registered"] for r in catalogue), [r["name"] for r in catalogue if not r["registered"]]
    unknown = {r["name"]: r["feature"] for r in catalogue if r["feature"] not in FEATURES}
    assert not unknown, f"docstrings name features that are not matrix rows: {unknown}"
    assert all(n.startswith("mut-") for n in names)
    assert set(DEFAULT) <= set(names), sorted(set(DEFAULT) - set(names))
    default = [r for r in catalogue if r["name"] in DEFAULT]
    assert {r["module"] for r in default} == {r["module"] for r in catalogue}, "every area needs a default mutant"
    assert 0.4 <= len(default) / len(catalogue) <= 0.6, "the default run takes about half"


def test_scoring_rules() -> None:
    """Caught means the named feature (or the whole column) shows the bug; elsewhere is still a survivor."""

    def cell(driver: str, feature: str, outcome: str) -> dict[str, Any]:
        return {"column": f"{driver}@memory", "feature": feature, "outcome": outcome, "message": "m"}

    def column(driver: str, error: str | None = None) -> dict[str, Any]:
        return {"id": f"{driver}@memory", "driver": driver, "error": error, "duration_s": 1.0}

    mutants = [
        {"name": n, "feature": f, "module": "lifecycle", "bug": "b", "target": "t", "registered": True}
        for n, f in [
            ("mut-at", "list"),
            ("mut-error", "connect"),
            ("mut-error-unnamed", "list"),
            ("mut-elsewhere", "list"),
            ("mut-lie", "list"),
            ("mut-survivor", "list"),
            ("mut-absent", "list"),
        ]
    ]
    matrix = {
        "columns": [
            column("fake"),
            *(column(n) for n in ("mut-at", "mut-elsewhere", "mut-lie", "mut-survivor")),
            column("mut-error", "cannot start"),
            column("mut-error-unnamed", "cannot start"),
        ],
        "cells": [
            cell("fake", "list", "passes"),
            cell("mut-at", "list", "fails"),
            cell("mut-elsewhere", "list", "passes"),
            cell("mut-elsewhere", "get", "fails"),
            cell("mut-lie", "list", "not_declared_but_works"),
            cell("mut-survivor", "list", "passes"),
            cell("mut-survivor", "pause", "not_declared"),
        ],
    }
    result = harness.score(matrix, mutants)
    verdicts = {m["name"]: m["verdict"] for m in result["mutants"]}
    assert verdicts == {
        "mut-at": "caught",
        "mut-error": "caught",
        "mut-error-unnamed": "caught_elsewhere",
        "mut-elsewhere": "caught_elsewhere",
        "mut-lie": "caught",
        "mut-survivor": "survived",
        "mut-absent": "not_run",
    }
    assert (result["caught"], result["caught_anywhere"], result["total"]) == (3, 5, 7)
    assert result["controls"]["fake"]["all_pass"]
    matrix["columns"] = matrix["columns"][1:]
    assert not harness.score(matrix, mutants)["controls"]["fake"]["all_pass"], "a missing control is not a pass"


def test_the_default_half_is_caught(
    mutant_env: dict[str, str], catalogue: list[dict[str, Any]], tmp_path: Path
) -> None:
    names = [r["name"] for r in catalogue if r["name"] in DEFAULT]
    _assert_all_caught(_score(names, mutant_env, tmp_path, "default"))


@pytest.mark.slow
def test_every_mutant_is_caught(mutant_env: dict[str, str], catalogue: list[dict[str, Any]], tmp_path: Path) -> None:
    _assert_all_caught(_score([r["name"] for r in catalogue], mutant_env, tmp_path, "all"))
