"""The CLI entry of a checkout: ``python cli.py [flags] < tasks.json`` (the same as the ``dispatch`` command)."""
import sys

from dispatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
