"""int8 on CPUs: the image pass and the cross-modal fusion of the loaded checkpoint, exported to ONNX and quantised
dynamically (int8 weights, activations quantised per call), run by ONNX Runtime (the [int8] extra). The text pass
stays in torch float32: texts are short (a small share of any command's time), and the text tower is where int8 moves
the numbers most (benchmarks/bench_int8.py). The heads (a few matrix products) stay in float32 too.

The graphs are built from the checkpoint bt loaded, once, and cached under ``$HF_HOME/bt/int8`` (``BT_INT8_CACHE``),
keyed by the checkpoint's fingerprint, the pass, the quantisation and the versions of bt's export, torch and ONNX
Runtime. An entry is used only when every file matches the sha256 its manifest names; a damaged or stale one is
rebuilt, and nothing bt did not build is ever deleted. int8 is approximate: benchmarks/bench_int8.py measures how
close it comes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import BtError
from .hub import fingerprint
from .loading import LoadedModel
from .runtime import Fused, ImageStates, Runtime, TextStates

# Bumped whenever the exported graphs change: older cache entries are then never used.
EXPORT_VERSION = 2
# How ONNX Runtime quantises: the matrix products' weights in int8 with one scale per output channel, activations
# quantised per call (benchmarks/bench_int8.py: closer to float32 than one scale per tensor, as fast). Part of every
# cache key.
QUANTISATION = {"weight_type": "QInt8", "per_channel": True, "op_types_to_quantize": ["MatMul"]}
MANIFEST = "manifest.json"
MARKER = ".bt-int8"  # in every directory bt builds: what it may delete


def _require_onnxruntime():
    try:
        import onnx  # noqa: F401  (quantisation reads and writes graphs with it)
        import onnxruntime
    except ImportError:
        raise BtError(
            "--dtype int8 needs ONNX Runtime", "pip install 'bridgetower-cli[int8]', or use --dtype float32"
        ) from None
    return onnxruntime


def cache_root() -> Path:
    """Where built graphs live: ``BT_INT8_CACHE``, else ``bt/int8`` in the Hugging Face home."""
    if os.environ.get("BT_INT8_CACHE"):
        return Path(os.environ["BT_INT8_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "bt" / "int8"


def _padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, length] of 1/0 as the additive [batch, 1, 1, length] mask the stock attention takes."""
    return (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


class _ImagePass(nn.Module):
    """``Runtime.image_pass`` as one graph: pixel values -> (cross-stack inputs, unimodal ITC embedding)."""

    def __init__(self, runtime: Runtime):
        super().__init__()
        self.runtime, self.network = runtime, runtime.network  # (the network registered: its weights exported)

    def forward(self, pixel_values):
        layers, itc = self.runtime.image_pass(pixel_values)
        return (layers,) if itc is None else (layers, itc)


class _FusionPass(nn.Module):
    """``Runtime.cross_stack`` as one graph: padded text states, image states and the text mask -> the outputs."""

    def __init__(self, runtime: Runtime):
        super().__init__()
        self.runtime, self.network = runtime, runtime.network

    def forward(self, text_layers, image_layers, attention_mask):
        return self.runtime.cross_stack(text_layers, image_layers, _padding_mask(attention_mask))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


class GraphCache:
    """Built int8 graphs on disk: one directory per (checkpoint, pass, versions), a manifest of sha256 digests."""

    def __init__(self, root: Path):
        self.root = root

    def entry(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"{key['checkpoint']}-{key['pass']}-{digest}"

    def valid(self, entry: Path, key: dict) -> bool:
        """Whether ``entry`` holds the graph for ``key`` exactly as it was written."""
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            files = manifest["files"].items()
            return manifest["key"] == key and all(_sha256(entry / name) == sha for name, sha in files)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def get_or_build(self, key: dict, build) -> Path:
        """The graph file for ``key``, built by ``build(directory) -> file name`` when absent or failing its check.
        Builders race safely: each builds in its own directory, the first rename wins, the others use its graph."""
        entry = self.entry(key)
        if self.valid(entry, key):
            return entry / json.loads((entry / MANIFEST).read_text())["graph"]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=".building-", dir=self.root))
        except OSError as error:
            hint = "set BT_INT8_CACHE to a writable folder"
            raise BtError(f"cannot write the int8 cache {self.root}: {error}", hint) from None
        try:
            (building / MARKER).touch()
            graph = build(building)
            files = {graph: _sha256(building / graph)}
            manifest = {"key": key, "graph": graph, "files": files}
            (building / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if not self.valid(entry, key):  # (another process may have just put a good one there)
                self._discard(entry)  # damaged: bt built it (its marker says so), so bt may remove it
            with contextlib.suppress(OSError):  # another process may have renamed its build into place first
                os.rename(building, entry)
        finally:
            self._discard(building)
        if not self.valid(entry, key):
            hint = "remove it, or set BT_INT8_CACHE"
            raise BtError(f"the int8 cache entry {entry} fails its check and is not bt's to replace", hint)
        return entry / graph

    @staticmethod
    def _discard(directory: Path) -> None:
        """Remove a directory bt built (it holds bt's marker); anything else is left alone."""
        if (directory / MARKER).is_file() and not directory.is_symlink():
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _quiet(logging):
    """The quantiser logs advice to the root logger: not for bt's users."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _export_and_quantise(module: nn.Module, args: tuple, names: dict, directory: Path) -> str:
    """Export ``module`` at ``args`` to ONNX (batch and length axes dynamic) and quantise it; the file name."""
    import logging
    import warnings

    from onnxruntime.quantization import QuantType, quantize_dynamic

    exported = directory / "float32.onnx"
    module.eval()  # (the exporter puts a module back in the mode it found it in, and its submodules: the network's)
    with warnings.catch_warnings(), _quiet(logging), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's and the quantiser's advice is for their developers
        torch.onnx.export(
            module,
            args,
            str(exported),
            input_names=names["inputs"],
            output_names=names["outputs"],
            dynamic_axes=names["axes"],
            opset_version=17,
            dynamo=False,
        )
        options = dict(QUANTISATION, weight_type=QuantType[QUANTISATION["weight_type"]])
        quantize_dynamic(str(exported), str(directory / "int8.onnx"), **options)
    exported.unlink()
    return "int8.onnx"


class QuantizedRuntime(Runtime):
    """``Runtime`` with the image pass and the fusion in int8 through ONNX Runtime (CPU); the text pass, the heads,
    the tokenizer and the image processor are the stock ones."""

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        ort = _require_onnxruntime()
        self.has_itc = "itc" in loaded.heads
        checkpoint = fingerprint(loaded.path)
        versions = {"export": EXPORT_VERSION, "torch": torch.__version__, "onnxruntime": ort.__version__}
        versions["quantisation"] = QUANTISATION
        cache = GraphCache(cache_root())
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.sessions = {}
        for name, (module, args, names) in self._passes().items():
            key = {"checkpoint": checkpoint, "pass": name, "heads": list(loaded.heads), "image_size": self.image_size}
            key |= versions
            path = cache.get_or_build(key, functools.partial(_export_and_quantise, module, args, names))
            self.sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _passes(self) -> dict:
        """Each pass: (module, example inputs, input/output names and dynamic axes)."""
        size, hidden = self.image_size, self.tower.config.hidden_size
        images = Runtime.encode_images(self, torch.zeros(2, 3, size, size))
        image_layers = torch.stack([state.layers for state in images])
        itc = ["itc"] if self.has_itc else []
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, 6:] = 0
        return {
            "image": (
                _ImagePass(self),
                (torch.zeros(2, 3, size, size),),
                {"inputs": ["pixel_values"], "outputs": ["layers", *itc], "axes": {"pixel_values": {0: "batch"}}},
            ),
            "fusion": (
                _FusionPass(self),
                (torch.zeros(2, image_layers.shape[1], 8, hidden), image_layers, mask),
                {
                    "inputs": ["text_layers", "image_layers", "attention_mask"],
                    "outputs": ["text_features", "image_features"],
                    "axes": {
                        "text_layers": {0: "batch", 2: "length"},
                        "image_layers": {0: "batch"},
                        "attention_mask": {0: "batch", 1: "length"},
                    },
                },
            ),
        }

    def _run(self, name: str, **inputs) -> list[torch.Tensor]:
        feeds = {key: value.numpy() for key, value in inputs.items()}
        return [torch.from_numpy(output) for output in self.sessions[name].run(None, feeds)]

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> list[ImageStates]:
        stacked, *itc = self._run("image", pixel_values=pixel_values.float().contiguous())
        return [ImageStates(stacked[i], itc[0][i] if itc else None) for i in range(stacked.shape[0])]

    @torch.inference_mode()
    def fuse(self, texts: list[TextStates], images: list[ImageStates]) -> Fused:
        text_layers, attention_mask, lengths = self.padded(texts)
        image_layers = torch.stack([i.layers for i in images])
        text_out, image_out = self._run(
            "fusion", text_layers=text_layers, image_layers=image_layers, attention_mask=attention_mask
        )
        return Fused(text_out, image_out, lengths)

    def fuse_states(self, texts, images):
        raise BtError("bt explain differentiates the model: int8 graphs have no gradients", "use --dtype float32")
