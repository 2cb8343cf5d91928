"""`python -m forwarder.spa_tool --dir DIR <command>`: run a lab SPA authority.

The implementation lives in forwarder.spa.tool; this module is only the entry
point, so the command users type does not change.
"""
import sys

from forwarder.spa.tool import main

if __name__ == "__main__":
    sys.exit(main())
