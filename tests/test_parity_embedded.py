"""The README's main job, end to end: the parity matrix over every installed backend on its embedded default.

This is the regression guard for honest declarations: any cell that fails or
lies ("declared but fails") and any column whose endpoint did not start fails
the test, with the cell's message. "Not declared but works" is allowed (it
costs callers a feature, not correctness) but is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import virtdrivers
from virtdrivers_conformance.matrix import validate


def test_every_backend_passes_what_it_declares_on_its_embedded_endpoints(tmp_path: Path) -> None:
    out = tmp_path / "parity"
    result = subprocess.run(
        [sys.executable, "-m", "virtdrivers.cli", "parity", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    matrix = json.loads((out / "parity.json").read_text())
    validate(matrix)
    expected = {
        f"{e.name}@{ep.name}"
        for e in virtdrivers.list_drivers()
        if e.driver_class is not None
        for ep in e.driver_class.embedded_endpoints()
    }
    columns = {c["id"]: c for c in matrix["columns"]}
    assert set(columns) == expected
    problems = [f"{cid}: endpoint error: {c['error']}" for cid, c in columns.items() if c["error"]]
    problems += [
        f"{c['column']} {c['feature']}: {c['outcome']}: {c['message']}"
        for c in matrix["cells"]
        if c["outcome"] in ("fails", "declared_but_fails")
    ]
    assert not problems, "\n".join(problems)
    for column in columns.values():
        assert column["backend"], column
        assert column["declared"] is not None
    lies = [f"{c['column']} {c['feature']}" for c in matrix["cells"] if c["outcome"] == "not_declared_but_works"]
    print("not declared but works:", ", ".join(lies) or "none")
