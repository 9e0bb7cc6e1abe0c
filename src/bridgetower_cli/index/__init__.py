"""The embedding index behind ``bt retrieve`` and ``bt index``."""
