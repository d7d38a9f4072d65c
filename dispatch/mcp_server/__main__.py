"""``python -m dispatch.mcp_server``: the same as ``dispatch mcp``."""
import sys

from dispatch.mcp_server.command import main

sys.exit(main())
