"""Loading a published-layout checkpoint (pytorch_model.bin, as the public repos hold it) against a safetensors copy
of the same weights: load time and peak RSS, each measured in a fresh process, side by side in one run.

    python benchmarks/bench_published.py [--size base] [--repeats 3]

Both checkpoints are built once with the same seed (identical weights); each measurement is a new Python process
that imports bt, loads the checkpoint (timed), then scores one pair; peak RSS (VmHWM) after the load and after the
first score. The match logits of the two must agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import CACHE, SAMPLES, machine, table

PROBE = """
import json, re, sys, time
from pathlib import Path
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
from bridgetower_cli.tasks import pairs
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
imports = peak()
start = time.perf_counter()
loaded = load_model(Path(sys.argv[1]), "bench", "cpu", "float32")
seconds = time.perf_counter() - start
after = peak()
outcome = pairs.score(Runtime(loaded), expand_image_sources([sys.argv[2]]), ["a cat"])
records = outcome if isinstance(outcome, list) else list(getattr(outcome, "records", outcome))
print(json.dumps({"load_s": seconds, "imports_mib": imports, "after_mib": after, "score_mib": peak(),
                  "logit": records[0].logit}))
"""


def build(size: str) -> dict[str, Path]:
    from bridgetower_cli.testing import build_checkpoint

    paths = {}
    for layout, weights in (("published", "pytorch_model.bin"), ("transformers", "model.safetensors")):
        path = CACHE / f"{size}-itm-mlm-{layout}"
        if not (path / weights).is_file():
            print(f"building {path} (once) ...", flush=True)
            build_checkpoint(path, size, ("itm", "mlm"), seed=0, layout=layout)
        paths[layout] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    paths = build(args.size)
    runs: dict[str, list[dict]] = {layout: [] for layout in paths}
    for _ in range(args.repeats):  # interleaved, so both see the same page-cache state and machine load
        for layout, path in paths.items():
            probe = subprocess.run(
                [sys.executable, "-c", PROBE, str(path), str(SAMPLES / "cat.jpg")],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[layout].append(json.loads(probe.stdout.strip().splitlines()[-1]))
    rows, summary = [], {}
    for layout, results in runs.items():
        weights = next(paths[layout].glob("*.bin"), None) or next(paths[layout].glob("*.safetensors"))
        median = {key: statistics.median(r[key] for r in results) for key in ("load_s", "after_mib", "score_mib")}
        summary[layout] = median | {"file_mib": weights.stat().st_size / 2**20, "logit": results[0]["logit"]}
        rows.append(
            [
                f"{layout} ({weights.name})",
                f"{summary[layout]['file_mib']:.0f} MiB",
                f"{median['load_s']:.2f} s",
                f"{median['after_mib']:.0f} MiB",
                f"{median['score_mib']:.0f} MiB",
            ]
        )
    print(machine())
    print(f"{args.size} checkpoint, ITM + MLM heads, fp32, median of {args.repeats} fresh processes each")
    print(table(["layout", "weights", "load", "peak RSS after load", "peak RSS after first score"], rows))
    ratio = summary["published"]["load_s"] / summary["transformers"]["load_s"]
    diff = abs(summary["published"]["logit"] - summary["transformers"]["logit"])
    print(f".bin load time = {ratio:.2f}x safetensors; |logit difference| = {diff:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
