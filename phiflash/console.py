"""How every command ends: a :class:`PhiflashError` becomes one line on stderr and exit 1."""

from __future__ import annotations

import sys

from phiflash.errors import PhiflashError


def run_main(fn, argv) -> int:
    """Run a command's ``main(argv)``; errors and Ctrl-C end in one line, never a traceback."""
    try:
        return int(fn(argv) or 0)
    except PhiflashError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def command_main(fn) -> None:
    """``if __name__ == "__main__": command_main(main)`` for a command module."""
    sys.exit(run_main(fn, sys.argv[1:]))
