"""``python -m dispatch.cli``: the same as the ``dispatch`` command."""
import sys

from dispatch.cli.main import main

sys.exit(main())
