"""`--server auto` (the automatic server) against bt in process, side by side in one run.

    python benchmarks/bench_auto.py [--sizes tiny,base] [--calls 20] [--images 200] [--json results/auto.json]

1. a shell loop of one-pair `bt score` calls (a new process each), BT_SERVER=auto vs in process; the auto loop
   starts with no server, so its first call pays for starting one;
2. one call to a warm automatic server, the whole process, side by side (interleaved, medians) with `python -c pass`,
   `import typer`, `bt --help` and `bt score --help`; the call's parts, timed inside it (imports, parsing, the
   health probe, the request, rendering, the rest); the client's slowest imports (`python -X importtime`);
3. `bt index` of distinct photos through the warm automatic server vs in process (fresh index each), whole command;
4. the server's resident memory with the model loaded (the cost of keeping it for --keep-alive).
Each side's output is checked equal to the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SAMPLES, checkpoint, machine, photo_folder, table

BT = shutil.which("bt") or f"{sys.executable} -m bridgetower_cli"
CAT = SAMPLES / "cat.jpg"


def environment(runtime: Path, auto: bool) -> dict:
    """Each side's environment. Python caches bytecode as it does by default (and as a wheel's install compiles
    it): a PYTHONDONTWRITEBYTECODE=1 left set (as on the developers' machines) would recompile bt's modules in every
    call (+44 ms there)."""
    env = dict(os.environ, BT_DEVICE="cpu", XDG_RUNTIME_DIR=str(runtime))
    env.pop("BT_SERVER", None), env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env | ({"BT_SERVER": "auto"} if auto else {})


def stop(runtime: Path) -> None:
    subprocess.run([*BT.split(), "serve", "--stop"], env=environment(runtime, False), capture_output=True)


def shell_loop(path: Path, calls: int, env: dict) -> tuple[float, str]:
    line = f"for i in $(seq {calls}); do {BT} score {CAT} 'two cats' -m {path} -f json; done"
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", line], check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


# One warm call timed from inside: its imports, then main() with the probe, the request and the rendering timed.
PARTS = r"""
import json, sys, time
start = time.perf_counter()
import bridgetower_cli.cli, bridgetower_cli.cli.pairs, bridgetower_cli.cli.render as render
from bridgetower_cli import autoserver, backend, client
from bridgetower_cli.cli import quick
imported = time.perf_counter()
spent = {"parse": 0.0, "health probe": 0.0, "request": 0.0, "render": 0.0}
def timed(owner, name, part):
    original = getattr(owner, name)
    def run(*args, **kwargs):
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - began
    setattr(owner, name, run)
timed(quick, "parse", "parse")
timed(client.Client, "get", "health probe")
timed(render, "render", "render")
streamed = client.Client.stream
def stream(self, *args):
    records = streamed(self, *args)
    while True:
        began = time.perf_counter()
        record = next(records, None)
        spent["request"] += time.perf_counter() - began
        if record is None:
            return
        yield record
client.Client.stream = stream
try:
    bridgetower_cli.cli.main(sys.argv[1:])
except SystemExit:
    pass
total = time.perf_counter() - imported
parts = {"imports": imported - start, **spent, "the rest (options, sources, connect)": total - sum(spent.values())}
print(json.dumps(parts), file=sys.stderr)
"""


def score_args(path: Path) -> list[str]:
    return ["score", str(CAT), "two cats", "-m", str(path), "-f", "json"]


def startup(path: Path, env: dict, runs: int = 11) -> dict[str, float]:
    """Whole processes, interleaved (the machine's load hits every case alike): medians in seconds."""
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import typer'": [sys.executable, "-c", "import typer"],
        "bt --help": [*BT.split(), "--help"],
        "bt score --help": [*BT.split(), "score", "--help"],
        "warm call (bt score, BT_SERVER=auto)": [*BT.split(), *score_args(path)],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, command in cases.items():
            start = time.perf_counter()
            subprocess.run(command, env=env, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(measured) for name, measured in times.items()}


def warm_parts(path: Path, env: dict, runs: int = 7) -> dict[str, float]:
    """The parts of a warm call, timed inside it (``PARTS``): medians in seconds."""
    found: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", PARTS, *score_args(path)], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        for part, seconds in json.loads(done.stderr.strip().splitlines()[-1]).items():
            found.setdefault(part, []).append(seconds)
    return {part: statistics.median(measured) for part, measured in found.items()}


def slowest_imports(path: Path, env: dict, count: int = 6) -> list[tuple[str, float]]:
    """The client's slowest imports (cumulative), from -X importtime."""
    args = [sys.executable, "-X", "importtime", "-m", "bridgetower_cli", *score_args(path)]
    stderr = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stderr
    found = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 2:  # top-level imports and their direct children
            found[match.group(3)] = int(match.group(1)) / 1e6
    return sorted(found.items(), key=lambda item: -item[1])[:count]


def index_run(path: Path, photos: Path, index: Path, env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([*BT.split(), "index", str(photos), "--index", str(index), "-m", str(path), "-f", "json"],
                          env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return time.perf_counter() - start, json.loads(done.stdout)[0]


def server_rss_mib(runtime: Path) -> float:
    done = subprocess.run([*BT.split(), "serve", "--status", "-f", "json"], env=environment(runtime, False),
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)["rss_mb"]


def print_startup(size: str, measured: dict) -> None:
    print(f"\nstart-up, whole processes side by side ({size}; medians of 11, interleaved)")
    print(table(["case", "median"], [[name, f"{s * 1000:.0f} ms"] for name, s in measured["startup_s"].items()]))
    print(f"\nthe warm call's parts, timed inside it ({size}; medians of 7; before them the interpreter starts, as in "
          "`python -c pass`)")  # fmt: skip
    parts = measured["warm_call_parts_s"]
    print(table(["part", "median"], [[part, f"{s * 1000:.1f} ms"] for part, s in parts.items()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    runtime = Path(tempfile.mkdtemp(prefix="bt-bench-run-"))
    photos = photo_folder(args.images)
    results, loop_rows, index_rows = {}, [], []
    for size in args.sizes.split(","):
        path = checkpoint(size, ("itm", "mlm", "itc"))
        auto, local = environment(runtime, True), environment(runtime, False)
        stop(runtime)
        try:
            with_auto, auto_out = shell_loop(path, args.calls, auto)  # (its first call starts the server)
            in_process, local_out = shell_loop(path, args.calls, local)
            assert auto_out == local_out, "the outputs differ"
            side_by_side = startup(path, auto)
            warm = side_by_side["warm call (bt score, BT_SERVER=auto)"]
            parts = warm_parts(path, auto)
            folder = Path(tempfile.mkdtemp(prefix="bt-bench-index-"))
            index_auto, stats_auto = index_run(path, photos, folder / "auto.sqlite", auto)
            index_local, stats_local = index_run(path, photos, folder / "local.sqlite", local)
            assert stats_auto == stats_local, (stats_auto, stats_local)
            rss = server_rss_mib(runtime)
            results[size] = {
                "loop_in_process_s": in_process,
                "loop_auto_s": with_auto,
                "warm_call_s": warm,
                "index_in_process_s": index_local,
                "index_auto_s": index_auto,
                "server_rss_mib": rss,
                "startup_s": side_by_side,
                "warm_call_parts_s": parts,
            }
            if size == "tiny":
                results["client_imports_s"] = slowest_imports(path, auto)
            speed = in_process / with_auto
            loop_rows.append([size, f"{in_process:.1f} s", f"{with_auto:.1f} s", f"{speed:.1f}x", f"{warm:.2f} s"])
            images = stats_local["new"]
            index_rows.append(
                [size, f"{images / index_local:.1f} img/s", f"{images / index_auto:.1f} img/s",
                 f"{index_local / index_auto:.2f}", f"{rss:.0f} MiB"]
            )  # fmt: skip
        finally:
            stop(runtime)
    print(f"\n{args.calls} one-pair `bt score` calls in a shell loop (new processes; auto: the first starts it)")
    print(table(["checkpoint", "in process", "BT_SERVER=auto", "speed-up", "one warm call"], loop_rows))
    print(f"\n`bt index` of {args.images} photos, whole command (auto: a warm server), and the server's memory")
    print(table(["checkpoint", "in process", "auto", "auto / in process", "server RSS"], index_rows))
    for size in args.sizes.split(","):
        print_startup(size, results[size])
    if "client_imports_s" in results:
        shown = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in results["client_imports_s"])
        print(f"\nthe client's slowest imports (cumulative): {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
