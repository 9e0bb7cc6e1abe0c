"""Small things several test modules share (no torch here)."""

from __future__ import annotations

import socket

# Runs bt's CLI with the arguments given, then says on stderr which heavy modules it imported ("HEAVY=...").
CHECK_IMPORTS = (
    "import sys; from bridgetower_cli.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
