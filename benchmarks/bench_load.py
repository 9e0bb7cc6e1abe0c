"""Peak memory of loading the base checkpoint (fp32) with bt: one backbone plus every head it holds.

    python benchmarks/bench_load.py

Reads the peak resident set size (VmHWM, /proc/self/status) after the imports, after the load and after a first
score (which touches every weight of the memory-mapped file), and compares them with the safetensors size.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def peak_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json")
    parser.add_argument("--heads", default="itm,mlm,itc")
    args = parser.parse_args()
    from common import checkpoint

    from bridgetower_cli.model.loading import load_model

    path = checkpoint("base", tuple(args.heads.split(",")))
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20
    imports = peak_mib()
    loaded = load_model(path, "base", "cpu", "float32")
    after = peak_mib()
    from common import SAMPLES

    from bridgetower_cli.model.runtime import Runtime
    from bridgetower_cli.sources import expand_image_sources
    from bridgetower_cli.tasks import pairs

    pairs.score(Runtime(loaded), expand_image_sources([str(SAMPLES / "cat.jpg")]), ["a cat"])
    forward = peak_mib()
    params = sum(p.numel() for p in loaded.network.parameters()) / 1e6
    print(f"checkpoint {path.name}: {size:.0f} MiB safetensors, {params:.0f} M parameters, heads {loaded.heads}")
    print(
        f"peak RSS after imports {imports:.0f} MiB; after bt's load {after:.0f} MiB; after a first score "
        f"{forward:.0f} MiB ({forward / size:.2f}x the safetensors size)"
    )
    print(
        f"load: +{after - imports:.0f} MiB = {(after - imports) / size:.2f}x the safetensors size "
        f"(whole process {after / size:.2f}x)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"safetensors_mib": size, "imports_mib": imports, "after_mib": after, "forward_mib": forward})
        )


if __name__ == "__main__":
    main()
