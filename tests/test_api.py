"""The Python API (issue 21): the README's example runs as written (on the tiny checkpoint), and its records are the
CLI's, key for key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(full_checkpoint, tmp_path, samples):
    code = readme_example().replace('"BridgeTower/bridgetower-large-itm-mlm-itc"', repr(str(full_checkpoint)))
    code = code.replace('"photos.sqlite"', repr(str(tmp_path / "photos.sqlite")))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["best"].probability == max(r.probability for r in namespace["records"])
    assert len(namespace["vectors"]) == 2 and len(namespace["hits"]) == 5 and len(namespace["maps"]) == 1
    assert namespace["masks"][0].masks and {r.text for r in namespace["texts"]} == {"a cat", "a rocket"}
    assert namespace["report"].sound and namespace["report"].images == 5


def test_records_are_the_clis_key_for_key(bt, full_checkpoint, samples):
    import bridgetower_cli as bt_api

    model = bt_api.load(str(full_checkpoint), device="cpu")
    mine = [r.to_dict() for r in model.score([samples / "cat.jpg"], ["a cat", "a dog"])]
    cli = bt("score", samples / "cat.jpg", "a cat", "a dog", "-m", full_checkpoint, "-f", "json").json()
    assert mine == cli


def test_images_as_pil_images_and_bytes_score_as_their_files(full_checkpoint, samples):
    from PIL import Image

    import bridgetower_cli as bt_api

    model = bt_api.load(str(full_checkpoint), device="cpu")
    (from_path,) = model.score([samples / "coffee.jpg"], ["a cup"])
    (from_bytes,) = model.score([(samples / "coffee.jpg").read_bytes()], ["a cup"])
    (from_pil,) = model.score([Image.open(samples / "coffee.jpg")], ["a cup"])
    assert from_bytes.probability == from_path.probability == from_pil.probability
    assert model.score([b"not an image"], ["a cup"]) == [] and model.skipped[0].name == "image[0]"


def test_importing_the_package_is_light_and_its_public_names_are_listed():
    check = (
        "import sys, bridgetower_cli as bt; assert 'torch' not in sys.modules; "
        "assert set(bt.__all__) <= set(dir(bt)); assert callable(bt.load); print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.stdout == "ok\n", result.stderr
