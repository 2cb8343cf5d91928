"""Let `python topologies/<script>.py` run with any Python.

Puts the repository on sys.path and, when the project's dependencies are not
importable by this interpreter (e.g. `sudo python3 topologies/fat_tree.py`
with the system Python), re-executes the script with the project's
.venv/bin/python. Without a venv it says, in one line, to run `make setup`.
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(REPO, ".venv")


def ensure() -> None:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    try:
        import cryptography  # noqa: F401
        import yaml  # noqa: F401
        import mininet.net  # noqa: F401
        import forwarder.apps.client  # noqa: F401
        return
    except ImportError as exc:
        missing = exc.name or str(exc)
    python = os.path.join(VENV, "bin", "python")
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(VENV)
    if os.path.exists(python) and not in_venv and not os.environ.get("DMSC_BOOTSTRAPPED"):
        os.environ["DMSC_BOOTSTRAPPED"] = "1"
        os.execv(python, [python] + sys.argv)
    sys.exit(f"{os.path.basename(sys.argv[0])}: Python package {missing!r} is missing; "
             "run `sudo make setup` first (it creates .venv)")


ensure()
