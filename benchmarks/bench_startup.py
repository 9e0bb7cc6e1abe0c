"""Start-up of the command line without a model: `bt --help`, and a usage error, against the floor that any Typer
app with rich help pays (`import typer, rich.console`), interleaved, the median of N runs each.

    python benchmarks/bench_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c 'import typer, rich.console'": [sys.executable, "-c", "import typer, rich.console"],
    "bt --help": [sys.executable, "-m", "bridgetower_cli", "--help"],
    "bt score (a usage error)": [sys.executable, "-m", "bridgetower_cli", "score"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):  # interleaved: the machine's load hits every case alike
        for name, command in CASES.items():
            start = time.perf_counter()
            subprocess.run(command, capture_output=True)
            times[name].append(time.perf_counter() - start)
    floor = statistics.median(times[next(iter(CASES))])
    print("| case | median | over the floor |\n|---|---|---|")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"| {name} | {median * 1000:.0f} ms | {(median - floor) * 1000:+.0f} ms |")


if __name__ == "__main__":
    main()
