"""`bt serve` against start-up per call, side by side in one run.

    python benchmarks/bench_serve.py [--sizes tiny,base] [--calls 20] [--clients 8] [--requests 20]

1. a shell loop of one-pair `bt score` calls, with and without BT_SERVER (the installed `bt`, a new process each);
2. the round trip of one request against the same library call in process (median of 30, tiny);
3. concurrent clients x requests against the same requests one after another: results equal, throughput;
4. the server's peak RSS with the model loaded (VmHWM of its process).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from common import SAMPLES, TEXTS, checkpoint, machine, table

BT = shutil.which("bt") or f"{sys.executable} -m bridgetower_cli"
CAT = SAMPLES / "cat.jpg"


def start_server(path: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [*BT.split(), "serve", "--port", "0", "-m", str(path), "-d", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = server.stdout.readline().strip()
    requests.get(f"{url}/health", timeout=600)  # waits in the backlog until the model is loaded
    return server, url


def shell_loop(path: Path, calls: int, url: str | None) -> float:
    env = dict(os.environ, BT_DEVICE="cpu") | ({"BT_SERVER": url} if url else {})
    line = f"for i in $(seq {calls}); do {BT} score {CAT} 'two cats' -m {path} -f json > /dev/null; done"
    start = time.perf_counter()
    subprocess.run(["bash", "-c", line], check=True, env=env)
    return time.perf_counter() - start


def one_pair(url: str, path: Path, text: str) -> float:
    data = base64.b64encode(CAT.read_bytes()).decode()
    body = {"model": str(path), "images": [{"name": "cat", "data": data}], "texts": [text]}
    response = requests.post(f"{url}/v1/score", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["records"][0]["logit"]


def round_trip(path: Path, url: str) -> tuple[float, float]:
    from bridgetower_cli.model.loading import load_model
    from bridgetower_cli.model.runtime import Runtime
    from bridgetower_cli.records import Outcome
    from bridgetower_cli.sources import ImageSource
    from bridgetower_cli.tasks import pairs

    runtime = Runtime(load_model(path, str(path), "cpu", "float32"))
    source = ImageSource("cat", data=CAT.read_bytes())

    def local():
        return list(pairs.score(runtime, [source], ["two cats"], Outcome()))

    times = {"local": [], "server": []}
    for _ in range(30):
        for label, call in (("local", local), ("server", lambda: one_pair(url, path, "two cats"))):
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
    return statistics.median(times["local"]), statistics.median(times["server"])


def concurrent(url: str, path: Path, clients: int, per_client: int) -> tuple[float, float, bool]:
    texts = [TEXTS[k % len(TEXTS)] for k in range(clients * per_client)]
    start = time.perf_counter()
    sequential = [one_pair(url, path, t) for t in texts]
    one_by_one = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        together = list(pool.map(lambda t: one_pair(url, path, t), texts))
    at_once = time.perf_counter() - start
    equal = all(abs(a - b) <= 1e-5 for a, b in zip(sequential, together))
    return one_by_one, at_once, equal


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    results, loop_rows, load_rows = {}, [], []
    for size in args.sizes.split(","):
        path = checkpoint(size, ("itm", "mlm", "itc"))
        server, url = start_server(path)
        try:
            with_server = shell_loop(path, args.calls, url)
            without = shell_loop(path, args.calls, None)
            loop_rows.append([size, f"{without:.1f} s", f"{with_server:.1f} s", f"{without / with_server:.1f}x"])
            per_client = args.requests if size == "tiny" else max(1, args.requests // 4)
            one_by_one, at_once, equal = concurrent(url, path, args.clients, per_client)
            count = args.clients * per_client
            load_rows.append(
                [
                    size,
                    f"{args.clients} x {per_client}",
                    f"{count / one_by_one:.1f} req/s",
                    f"{count / at_once:.1f} req/s",
                    f"{one_by_one / at_once:.2f}x",
                    "yes" if equal else "NO",
                ]
            )
            results[size] = {
                "loop_without_s": without,
                "loop_with_s": with_server,
                "sequential_s": one_by_one,
                "concurrent_s": at_once,
                "requests": count,
                "equal": equal,
                "server_peak_rss_mib": peak_rss_mib(server.pid),
            }
            if size == "tiny":
                local, remote = round_trip(path, url)
                results["round_trip"] = {"local_ms": local * 1000, "server_ms": remote * 1000}
        finally:
            server.terminate()
            server.wait(timeout=120)
    print(f"\n{args.calls} one-pair `bt score` calls in a shell loop (a new process each):")
    print(table(["checkpoint", "without server", "with BT_SERVER", "speed-up"], loop_rows))
    if "round_trip" in results:
        trip = results["round_trip"]
        print(
            f"\none pair, tiny: library call in process {trip['local_ms']:.1f} ms, through the server "
            f"{trip['server_ms']:.1f} ms: overhead {trip['server_ms'] - trip['local_ms']:.1f} ms"
        )
    print("\nconcurrent clients against the same requests one after another:")
    print(table(["checkpoint", "clients x requests", "sequential", "concurrent", "ratio", "results equal"], load_rows))
    print(
        "\nserver peak RSS: "
        + ", ".join(f"{s} {r['server_peak_rss_mib']:.0f} MiB" for s, r in results.items() if s != "round_trip")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
