"""`python -m forwarder.ctl <node> <command>`: the operator's command, kept short.

The implementation lives in forwarder.mgmt.ctl (the management plane); this
module is only the entry point, so the command users type does not change.
"""
import sys

from forwarder.mgmt.ctl import main

if __name__ == "__main__":
    sys.exit(main())
