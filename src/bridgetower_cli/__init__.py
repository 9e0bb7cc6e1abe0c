"""bt: the BridgeTower vision-language model at a shell prompt, and in Python::

    import bridgetower_cli as bt

    model = bt.load("BridgeTower/bridgetower-large-itm-mlm-itc")
    model.score(["cat.jpg"], ["two cats on a couch"])

Importing the package is light: torch and transformers load with the first model.
"""

__version__ = "0.1.0"

__all__ = [
    "BtError",
    "ClassificationEvalRecord",
    "EmbeddingRecord",
    "EvalRecord",
    "ExplainRecord",
    "FillMaskRecord",
    "LabelRecord",
    "Model",
    "RetrievalRecord",
    "ScoreRecord",
    "Skipped",
    "__version__",
    "load",
]

_HOMES = {
    "load": "api",
    "Model": "api",
    "BtError": "errors",
    "ClassificationEvalRecord": "records",
    "EmbeddingRecord": "records",
    "EvalRecord": "records",
    "ExplainRecord": "records",
    "FillMaskRecord": "records",
    "LabelRecord": "records",
    "RetrievalRecord": "records",
    "ScoreRecord": "records",
    "Skipped": "records",
}


def __getattr__(name: str):
    """The public names, imported when first used."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'bridgetower_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
