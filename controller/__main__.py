"""`python -m controller`: start the SCSC (an os-ken application) without osken-manager.

os-ken 4.x no longer ships the osken-manager command, so this is the small
launcher it would have been: register the options, parse them with os-ken's
oslo.config CONF, then AppManager: load_apps, create_contexts,
instantiate_apps, and wait for SIGTERM/SIGINT.

Shutdown is bounded: in os-ken 4.2.2's native hub, threads are plain
non-daemon threads, hub.kill() does nothing and hub.Event.wait(timeout)
ignores its timeout, so an orderly AppManager.close() is given at most
STOP_GRACE_S in a helper thread and the process then exits with os._exit,
whatever is still running. SIGTERM therefore ends the SCSC within 3 s.

    python -m controller --southbound 10.255.0.1:7000 --rest 10.255.0.1:8080
    python -m controller --help
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import List, Optional

STOP_GRACE_S = 1.5
APP = "controller.app"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from os_ken import cfg
    from os_ken.base import app_manager
    from oslo_config.cfg import Error as ConfigError
    from . import app as scsc_app  # registers the options

    try:
        cfg.CONF(args=argv, project="dmsc-scsc", prog="python -m controller",
                 default_config_files=[])
    except ConfigError as exc:
        print(f"controller: {exc}", file=sys.stderr)
        return 2
    level = str(cfg.CONF.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        print(f"controller: --log-level {cfg.CONF.log_level!r} is not debug, info, warning or error",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if level != "DEBUG":
        logging.getLogger("os_ken").setLevel(logging.WARNING)
    try:
        scsc_app.parse_hostport(cfg.CONF.southbound, "--southbound")
        scsc_app.parse_hostport(cfg.CONF.rest, "--rest")
        if not 0.5 <= cfg.CONF.policy_lifetime <= 86400:
            raise ValueError("--policy-lifetime: expected 0.5..86400 seconds")
    except ValueError as exc:
        print(f"controller: {exc}", file=sys.stderr)
        return 2

    # The event thread, the southbound thread and the REST threads hand work to each
    # other all the time: a 1 ms GIL switch interval (5 ms by default) keeps a policy
    # push to 200 forwarders from waiting on the interpreter.
    sys.setswitchinterval(0.001)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    mgr = app_manager.AppManager.get_instance()
    try:
        mgr.load_apps([APP])
        contexts = mgr.create_contexts()
        mgr.instantiate_apps(**contexts)
    except OSError as exc:
        print(f"controller: cannot start: {exc}", file=sys.stderr)
        _exit(1)
    if cfg.CONF.pid_file:
        with open(cfg.CONF.pid_file, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    log = logging.getLogger("dmsc.scsc")
    while not stop.wait(0.1):
        pass
    log.info("stopping")
    closer = threading.Thread(target=mgr.close, name="scsc-close", daemon=True)
    closer.start()
    closer.join(STOP_GRACE_S)
    if closer.is_alive():
        log.warning("applications did not stop within %.1f s; exiting anyway", STOP_GRACE_S)
    log.info("stopped")
    if cfg.CONF.pid_file:
        try:
            os.unlink(cfg.CONF.pid_file)
        except OSError:
            pass
    _exit(0)
    return 0


def _exit(code: int) -> None:
    """Leave now: os-ken's hub threads are non-daemon and cannot be killed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
