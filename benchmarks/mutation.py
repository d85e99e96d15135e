"""The conformance suite's mutation score over every broken driver, as a table.

Installs the mutants (``conformance/tests/mutants``) into a scratch directory,
runs the real ``virtdrivers parity`` over all of them plus the plain fake, and
prints each mutant's verdict (caught at the feature its docstring names, caught
only elsewhere, or survived), the slowest columns and the score. The test
``conformance/tests/test_mutation.py`` runs a representative half by default;
this runs them all, which is what to look at after changing the suite.

Run: ./dev bench mutation [--jobs N] [--only NAME ...]
Writes: build/mutation/score.json (and the matrix in build/mutation/parity/).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "conformance" / "tests" / "mutants" / "vd_mutants" / "harness.py"


def load_harness() -> ModuleType:
    """The harness from the source tree; it never imports a mutant into this process."""
    spec = importlib.util.spec_from_file_location("vd_mutants_harness", HARNESS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="columns run at once (default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these mutants")
    args = parser.parse_args()
    harness = load_harness()
    out = ROOT / "build" / "mutation"
    with tempfile.TemporaryDirectory(prefix="vd-mutants-") as site:
        env = harness.install(Path(site))
        catalogue = harness.catalogue(env)
        names = [m["name"] for m in catalogue if not args.only or m["name"] in args.only]
        matrix = harness.run_matrix(names, env, out / "parity", jobs=args.jobs)
    result = harness.score(matrix, [m for m in catalogue if m["name"] in names])
    result["selection"] = "all" if not args.only else "only"
    print(harness.render(result))
    slowest = sorted((m for m in result["mutants"] if m["duration_s"]), key=lambda m: -m["duration_s"])[:5]
    print("slowest columns: " + ", ".join(f"{m['name']} {m['duration_s']} s" for m in slowest))
    out.mkdir(parents=True, exist_ok=True)
    (out / "score.json").write_text(json.dumps(result, indent=1))
    print(f"written: {out / 'score.json'}")
    return 0 if not result["survivors"] and all(c["all_pass"] for c in result["controls"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
