"""The Mininet CLI with DMSC commands: ``dmsc <command> ...`` (``help dmsc``)."""
from __future__ import annotations

from mininet.cli import CLI

from ..proc import LabError
from .commands import HELP, DmscCommands, usage


class DmscCLI(CLI):
    """Mininet's CLI (``h1 ip link``, ``py``, ``exit`` ...) plus ``dmsc``."""

    prompt = "dmsc-lab> "

    def __init__(self, lab, **kw) -> None:
        self.lab = lab
        self.commands = DmscCommands(lab)
        super().__init__(lab.net, **kw)

    def do_dmsc(self, line: str) -> None:
        try:
            res = self.commands.run_line(line)
        except LabError as exc:
            self.stdout.write(f"{exc}\n")
            return
        except KeyboardInterrupt:
            self.stdout.write("interrupted\n")
            return
        self.stdout.write(res.text.rstrip("\n") + "\n")
        if not res.ok:
            self.stdout.write("(failed)\n")

    def help_dmsc(self) -> None:
        self.stdout.write(usage() + "\n")

    def complete_dmsc(self, text, line, begidx, endidx):
        words = line.split()
        if len(words) <= 1 or (len(words) == 2 and not line.endswith(" ")):
            return [c for c in HELP if c.startswith(text)]
        return [n for n in list(self.lab.topo.nodes) + list(self.lab.pods) if n.startswith(text)]

    # Mininet's IP-oriented commands mean little here; say so instead of failing oddly.
    def do_pingall(self, line: str) -> None:
        self.stdout.write("the DMSC lab has no IP data plane; use `dmsc ping <node> <name>`\n")

    do_pingpair = do_pingall
    do_iperf = do_pingall
