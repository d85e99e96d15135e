"""How fast `virtdrivers drivers` answers, against bare Python start-up, in one run.

The loader must list every installed plugin with its capabilities without
importing a vendor SDK; this prints the wall time of the whole command (median
of N runs) and its ratio to `python -c pass`, so a regression that drags a
vendor SDK or a heavy import into listing shows up as a number.

Run: ./dev bench cli_startup [N]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time


def median_wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=False, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    exe = [sys.executable, "-m", "virtdrivers.cli"]
    if installed := shutil.which("virtdrivers"):
        exe = [installed]
    check = subprocess.run([*exe, "drivers", "--json"], capture_output=True, text=True, check=False)
    if check.returncode not in (0, 1) or not check.stdout.startswith("["):
        sys.exit(f"virtdrivers drivers did not answer: {check.stderr.strip()}")
    base = median_wall([sys.executable, "-c", "pass"], runs)
    drivers = median_wall([*exe, "drivers", "--json"], runs)
    table = median_wall([*exe, "drivers"], runs)
    print(f"runs per command:              {runs}")
    print(f"python -c pass:                {base * 1000:7.1f} ms")
    print(f"virtdrivers drivers --json:    {drivers * 1000:7.1f} ms  ({drivers / base:.1f}x bare python)")
    print(f"virtdrivers drivers (table):   {table * 1000:7.1f} ms  ({table / base:.1f}x bare python)")
    print(f"budget 500 ms:                 {'within' if max(drivers, table) < 0.5 else 'OVER'}")


if __name__ == "__main__":
    main()
