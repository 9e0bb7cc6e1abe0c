"""`--server auto` (the automatic server) against bt in process, side by side in one run.

    python benchmarks/bench_auto.py [--sizes tiny,base] [--calls 20] [--images 200] [--json results/auto.json]

1. a shell loop of one-pair `bt score` calls (a new process each), BT_SERVER=auto vs in process; the auto loop
   starts with no server, so its first call pays for starting one;
2. one call to a warm automatic server, the whole process (median of 7), and the client's own start-up
   (`python -X importtime`: the slowest imports);
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
    env = dict(os.environ, BT_DEVICE="cpu", XDG_RUNTIME_DIR=str(runtime))
    env.pop("BT_SERVER", None)
    return env | ({"BT_SERVER": "auto"} if auto else {})


def stop(runtime: Path) -> None:
    subprocess.run([*BT.split(), "serve", "--stop"], env=environment(runtime, False), capture_output=True)


def shell_loop(path: Path, calls: int, env: dict) -> tuple[float, str]:
    line = f"for i in $(seq {calls}); do {BT} score {CAT} 'two cats' -m {path} -f json; done"
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", line], check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def one_call(path: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([*BT.split(), "score", str(CAT), "two cats", "-m", str(path), "-f", "json"], check=True, env=env,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def slowest_imports(path: Path, env: dict, count: int = 6) -> list[tuple[str, float]]:
    """The client's slowest imports (cumulative), from -X importtime."""
    args = [sys.executable, "-X", "importtime", "-m", "bridgetower_cli", "score", str(CAT), "two cats", "-m",
            str(path), "-f", "json"]  # fmt: skip
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
            warm = statistics.median(one_call(path, auto) for _ in range(7))
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
    if "client_imports_s" in results:
        shown = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in results["client_imports_s"])
        print(f"\nthe client's slowest imports (cumulative): {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
