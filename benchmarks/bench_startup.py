"""Start-up of the command line without a model: `bt --help`, `bt score --help` and a usage error, against the
interpreter (`python -c pass`), Typer alone and the floor that any Typer app with rich help pays (`import typer,
typer.rich_utils`), interleaved, the median of N runs each.

    python benchmarks/bench_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import typer'": [sys.executable, "-c", "import typer"],
    "python -c 'import typer, typer.rich_utils'": [sys.executable, "-c", "import typer, typer.rich_utils"],
    "bt --help": [sys.executable, "-m", "bridgetower_cli", "--help"],
    "bt score --help": [sys.executable, "-m", "bridgetower_cli", "score", "--help"],
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
    floor = statistics.median(times["python -c pass"])
    print("| case | median | over `python -c pass` |\n|---|---|---|")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"| {name} | {median * 1000:.0f} ms | {(median - floor) * 1000:+.0f} ms |")


if __name__ == "__main__":
    main()
