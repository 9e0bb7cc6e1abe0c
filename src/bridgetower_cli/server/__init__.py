"""``bt serve``: the ASGI app."""
