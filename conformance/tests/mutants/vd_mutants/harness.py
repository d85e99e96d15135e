"""Install the mutants out of tree, run the real parity CLI over them, and score the suite.

Shared by ``conformance/tests/test_mutation.py`` and ``benchmarks/mutation.py``,
which load this module from the source tree: it needs only the standard
library and ``virtdrivers_conformance.features``, never the mutants themselves,
so the calling process never sees their entry points. Everything that touches a
mutant happens in child processes with the private install on ``PYTHONPATH``:
the catalogue (``python -m vd_mutants``) and the parity run (``virtdrivers
parity``), exactly as a vendor's plugin would be found.

A mutant is **caught** when the feature its docstring names has a cell that is
neither ``passes`` nor ``not_declared``, or when its column could not run at all
(an error column) and that is where its bug shows: a connect or secrets bug, or
an error text that names the feature. A mutant whose only non-pass cells are on other features is
reported as **caught elsewhere**: the suite noticed something, but not where the
bug lives, so it still counts as a survivor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SOURCE", "catalogue", "install", "render", "run_matrix", "score"]

#: The mutants distribution's source tree (holds its pyproject.toml).
SOURCE = Path(__file__).resolve().parents[1]

#: The reference drivers every run includes as controls: they must pass every cell.
CONTROLS = ("fake",)

_OK = ("passes", "not_declared")

#: Features whose bugs show as a column that cannot start at all (the runner connects before any test).
_COLUMN_FEATURES = ("connect", "secrets")


def install(target: Path) -> dict[str, str]:
    """Build and install the mutants into ``target``; return an environment that sees them.

    Built with the project's own hatchling (no build isolation, no network) and
    installed with ``pip --target``, so the project's environment is never changed.
    """
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target]
    proc = subprocess.run([*map(str, cmd), str(SOURCE)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"installing the mutants failed:\n{proc.stdout}\n{proc.stderr}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def catalogue(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every mutant as the installed copy describes it: name, target, module, bug, feature, registered."""
    proc = subprocess.run(
        [sys.executable, "-m", "vd_mutants"], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"python -m vd_mutants failed:\n{proc.stderr}")
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def run_matrix(names: Sequence[str], env: dict[str, str], outdir: Path, *, jobs: int = 2) -> dict[str, Any]:
    """Run ``virtdrivers parity`` over the controls and ``names``; return the matrix it wrote."""
    drivers = [*CONTROLS, *names]
    cmd = [sys.executable, "-m", "virtdrivers.cli", "parity", "--jobs", str(jobs), "--output-dir", str(outdir)]
    for name in drivers:
        cmd += ["--driver", name]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=3600)
    matrix_file = outdir / "parity.json"
    if proc.returncode != 0 or not matrix_file.exists():
        raise RuntimeError(f"virtdrivers parity failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    matrix: dict[str, Any] = json.loads(matrix_file.read_text())
    matrix["mutation_wall_s"] = round(time.monotonic() - started, 1)
    return matrix


def _by_driver(matrix: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    columns = {c["driver"]: c for c in matrix["columns"]}
    cells: dict[str, list[dict[str, Any]]] = {}
    column_driver = {c["id"]: c["driver"] for c in matrix["columns"]}
    for cell in matrix["cells"]:
        if cell["column"] in column_driver:
            cells.setdefault(column_driver[cell["column"]], []).append(cell)
    return columns, cells


def score(matrix: dict[str, Any], mutants: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The mutation score of one run: per mutant its verdict, plus the controls' own health."""
    columns, cells = _by_driver(matrix)
    controls = {}
    for name in CONTROLS:
        control = columns.get(name)
        error = "no column in the matrix" if control is None else control.get("error")
        bad = [f"{c['feature']}: {c['outcome']}" for c in cells.get(name, []) if c["outcome"] != "passes"]
        ran = bool(cells.get(name))
        controls[name] = {"error": error, "not_passing": bad, "all_pass": ran and not bad and not error}
    rows = []
    for m in mutants:
        col = columns.get(m["name"])
        mine = {c["feature"]: c for c in cells.get(m["name"], [])}
        failing = sorted(f for f, c in mine.items() if c["outcome"] not in _OK)
        intended = mine.get(m["feature"])
        if col is None:
            verdict, detail = "not_run", "no column in the matrix"
        elif col.get("error"):
            # A column that cannot run is the right catch for a connection bug, or when its error names the feature.
            named = m["feature"] in _COLUMN_FEATURES or m["feature"] in str(col["error"])
            verdict = "caught" if named else "caught_elsewhere"
            detail = f"column error: {str(col['error'])[:300]}"
        elif intended is not None and intended["outcome"] not in _OK:
            message = (intended.get("message") or "")[:300]
            verdict, detail = "caught", f"{m['feature']}: {intended['outcome']}: {message}"
        elif failing:
            verdict, detail = "caught_elsewhere", "; ".join(f"{f}: {mine[f]['outcome']}" for f in failing)
        else:
            verdict, detail = "survived", f"{m['feature']}: {intended['outcome'] if intended else 'no test ran'}"
        duration = col.get("duration_s") if col else None
        detail = " ".join(detail.split())  # assertion messages span lines; a table row must not
        rows.append({**m, "verdict": verdict, "detail": detail, "failing_features": failing, "duration_s": duration})
    caught = [r for r in rows if r["verdict"] == "caught"]
    anywhere = [r for r in rows if r["verdict"] in ("caught", "caught_elsewhere")]
    return {
        "generated_at": matrix.get("generated_at"),
        "wall_s": matrix.get("mutation_wall_s"),
        "total": len(rows),
        "caught": len(caught),
        "score": round(len(caught) / len(rows), 3) if rows else None,
        "caught_anywhere": len(anywhere),
        "survivors": [
            {k: r[k] for k in ("name", "feature", "verdict", "bug", "detail")} for r in rows if r["verdict"] != "caught"
        ],
        "controls": controls,
        "mutants": rows,
    }


def render(result: dict[str, Any]) -> str:
    """A plain-text table of one score, survivors last, for a terminal or a test's output."""
    lines = [f"{'mutant':<36} {'feature':<18} {'verdict':<17} detail"]
    order = {"caught": 0, "caught_elsewhere": 1, "survived": 2, "not_run": 3}
    for r in sorted(result["mutants"], key=lambda r: (order[r["verdict"]], r["module"], r["name"])):
        lines.append(f"{r['name']:<36} {r['feature']:<18} {r['verdict']:<17} {r['detail'][:90]}")
    for name, control in result["controls"].items():
        state = "all pass" if control["all_pass"] else f"NOT all pass: {control['error'] or control['not_passing']}"
        lines.append(f"control {name}: {state}")
    lines.append(
        f"mutation score: {result['caught']}/{result['total']} caught at the named feature"
        f" ({result['caught_anywhere']}/{result['total']} caught anywhere), {result['wall_s']} s"
    )
    return "\n".join(lines)
