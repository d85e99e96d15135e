"""The parity runner: outcome rules, matrix assembly, and a real run over the fake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from virtdrivers_conformance.features import FEATURES
from virtdrivers_conformance.matrix import validate
from virtdrivers_conformance.runner import Target, build_matrix, cell_outcome, default_targets


def t(outcome: str) -> dict[str, Any]:
    return {"id": "x", "outcome": outcome, "message": "m" if outcome != "passed" else None}


@pytest.mark.parametrize(
    ("mandatory", "declared", "tests", "expected"),
    [
        (True, False, [t("passed"), t("passed")], "passes"),
        (True, False, [t("passed"), t("failed")], "fails"),
        (True, False, [t("passed"), t("skipped")], "passes"),
        (False, True, [t("passed")], "passes"),
        (False, True, [t("passed"), t("failed")], "declared_but_fails"),
        (False, False, [t("skipped")], "not_declared"),
        (False, False, [t("passed"), t("skipped")], "not_declared"),
        (False, False, [t("passed"), t("passed")], "not_declared_but_works"),
        (False, True, [], None),
        (True, False, [], None),
    ],
)
def test_cell_outcome_rules(mandatory: bool, declared: bool, tests: list[dict[str, Any]], expected: str | None) -> None:
    assert cell_outcome(mandatory, declared, tests) == expected


def test_build_matrix_is_valid_and_keeps_error_columns() -> None:
    ok = {
        "column": {"driver": "d", "endpoint": "e", "declared": ["pause"], "backend": "b", "error": None},
        "tests": [
            {"id": "a", "feature": "pause", "outcome": "failed", "message": "AssertionError: <&>", "duration_s": 0.1},
            {"id": "b", "feature": "create", "outcome": "passed", "message": None, "duration_s": 0.1},
            {"id": "c", "feature": "suspend", "outcome": "passed", "message": None, "duration_s": 0.1},
        ],
    }
    broken = {"column": {"driver": "x", "endpoint": "unloadable", "error": "plugin 'x' failed to import"}, "tests": []}
    matrix = build_matrix([("d@e", ok), ("x@unloadable", broken)])
    validate(matrix)
    cells = {(c["column"], c["feature"]): c for c in matrix["cells"]}
    assert cells["d@e", "pause"]["outcome"] == "declared_but_fails"
    assert cells["d@e", "pause"]["message"] == "AssertionError: <&>"
    assert cells["d@e", "suspend"]["outcome"] == "not_declared_but_works"
    assert cells["d@e", "create"]["outcome"] == "passes"
    assert not [c for c in matrix["cells"] if c["column"] == "x@unloadable"]
    assert matrix["columns"][1]["error"].startswith("plugin 'x'")
    assert [f["id"] for f in matrix["features"]] == list(FEATURES)


def test_an_endpoints_evidence_notes_reach_exactly_their_cells() -> None:
    note = "addresses set by the simulator at power-on, as a guest agent would report them"
    report = {
        "column": {"driver": "d", "endpoint": "e", "declared": ["guest_addresses"], "error": None},
        "tests": [
            {"id": "a", "feature": "guest_addresses", "outcome": "passed", "message": None, "duration_s": 0.1},
            {"id": "b", "feature": "create", "outcome": "passed", "message": None, "duration_s": 0.1},
        ],
    }
    report["column"]["notes"] = {"guest_addresses": note}
    matrix = build_matrix([("d@e", report)])
    validate(matrix)
    cells = {c["feature"]: c for c in matrix["cells"]}
    assert cells["guest_addresses"]["note"] == note
    assert cells["create"]["note"] is None
    assert matrix["columns"][0]["notes"] == {"guest_addresses": note}


def test_default_targets_cover_the_fake_and_unknown_names() -> None:
    targets = default_targets(["fake", "no-such-driver"])
    assert [t.id for t in targets] == ["fake@memory", "no-such-driver@unknown"]
    assert targets[0].error is None
    assert targets[1].error is not None
    assert isinstance(targets[0], Target)


def test_parity_over_the_fake_passes_everything_and_writes_every_format(tmp_path: Path) -> None:
    out = tmp_path / "parity"
    result = subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", "parity", "--driver", "fake", "--output-dir", str(out), "--strict"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    matrix = json.loads((out / "parity.json").read_text())
    validate(matrix)
    cells = [c for c in matrix["cells"] if c["column"] == "fake@memory"]
    assert {c["feature"] for c in cells} == set(FEATURES), "every feature must have evidence"
    assert {c["outcome"] for c in cells} == {"passes"}, [c for c in cells if c["outcome"] != "passes"]
    column = matrix["columns"][0]
    assert (column["backend"], column["driver_version"]) == ("fake", column["backend_version"])
    for name in ("parity.json", "parity.md", "parity.html", "parity.txt"):
        assert (out / name).stat().st_size > 500
    assert "fake@memory" in result.stdout
