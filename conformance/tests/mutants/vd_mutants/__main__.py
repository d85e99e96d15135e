"""``python -m vd_mutants``: the catalogue as JSON, each with whether its entry point is installed.

The mutation test runs this with the private install on PYTHONPATH, so the test
process itself never imports the mutants or sees their entry points.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points

from vd_mutants import mutants


def main() -> None:
    registered = {ep.name: ep.value for ep in entry_points(group="virtdrivers.drivers")}
    rows = [{**m.as_dict(), "registered": registered.get(m.name) == m.target} for m in mutants()]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
