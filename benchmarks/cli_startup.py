"""How fast `virtdrivers drivers` answers, against `python -c "import stevedore"`, in one run.

Listing installed drivers is reading the entry points plus what each plugin
declares, which the listing caches for as long as the plugin's code is unchanged
(``virtdrivers.listing``); ``--fresh`` imports every plugin, as the first listing
after a code change does, and is printed for comparison, not held to the goal.
The baseline is ``import stevedore`` rather than ``pass`` because stevedore is
the floor any entry-point listing pays; the goal is within 2x of it.

Runs are paired and interleaved (baseline, json, table, baseline, json, ...),
so load from other processes on a shared machine hits every command alike;
each command's median is printed, with the median of the per-round ratios.
One warm-up round runs first with bytecode writing allowed, so that stale or
missing ``.pyc`` files (``./dev`` exports PYTHONDONTWRITEBYTECODE) are not
timed as compilation.

Run: ./dev bench cli_startup [N]        (N rounds, default 21)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

#: Listing must stay within this multiple of the baseline.
GOAL_RATIO = 2.0


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    exe = [sys.executable, "-m", "virtdrivers.cli"]
    if installed := shutil.which("virtdrivers"):
        exe = [installed]
    env = dict(os.environ)
    warm_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    commands = {
        'python -c "import stevedore"': [sys.executable, "-c", "import stevedore"],
        "virtdrivers drivers --json": [*exe, "drivers", "--json"],
        "virtdrivers drivers (table)": [*exe, "drivers"],
        # Not held to the goal: every plugin imported, as on the first listing after a code change.
        "virtdrivers drivers --fresh": [*exe, "drivers", "--json", "--fresh"],
    }
    fresh_name = "virtdrivers drivers --fresh"
    check = subprocess.run(commands["virtdrivers drivers --json"], capture_output=True, text=True, env=warm_env)
    if check.returncode not in (0, 1) or not check.stdout.startswith("["):
        sys.exit(f"virtdrivers drivers did not answer: {check.stderr.strip()}")
    for cmd in commands.values():
        wall(cmd, warm_env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            times[name].append(wall(cmd, env))
    base_name = next(iter(commands))
    base = times[base_name]
    print(f"rounds (paired, interleaved): {rounds}")
    print(f"{base_name:<30} {statistics.median(base) * 1000:7.1f} ms")
    worst = 0.0
    for name in list(commands)[1:]:
        ratio = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
        if name != fresh_name:
            worst = max(worst, ratio)
        print(f"{name:<30} {statistics.median(times[name]) * 1000:7.1f} ms  ratio {ratio:.2f}x")
    print(f"goal within {GOAL_RATIO:.1f}x:               {'met' if worst <= GOAL_RATIO else 'NOT MET'}")


if __name__ == "__main__":
    main()
