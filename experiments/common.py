"""Shared machinery of the experiments (experiments/failure.py, load.py, telemetry.py, sidecar.py).

* :class:`Results`: one folder per run, ``results/<name>/<timestamp>/`` with a
  ``results/<name>/latest`` link, holding ``config.json`` (the exact parameters,
  the machine, the git commit, the lab's run folder and warnings), raw
  measurements (CSV or JSON lines), plots (PNG, matplotlib's Agg backend) and
  ``summary.md`` + ``summary.json`` (the headline numbers).
* :func:`parse_args`: the parameters every experiment shares (``--quick``, also
  ``QUICK=1`` in the environment; ``--seed``; ``--out``) and per-experiment
  defaults that differ in quick mode (a run of under two minutes).
* :class:`Progress`: one line per step on stderr with the elapsed time, so a
  long run shows where it is.
* :func:`start_lab`: a DmscLab brought up with its output kept in the results
  folder; :class:`LabProc`: a process of ours inside a lab host, recorded in the
  lab's ``records.jsonl`` so ``make clean`` finds it after a crash.
* Process accounting (CPU seconds and PSS/RSS from /proc), percentiles.

Nothing here sleeps for a fixed time to wait for the network: waits poll.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence

from topologies.measure import git_commit, loadavg, machine_facts, percentile
from topologies.proc import Proc, run, stop_all

REPO = Path(__file__).resolve().parent.parent
RESULTS_ROOT = REPO / "results"


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------

def quick_from_env() -> bool:
    return os.environ.get("QUICK", "").strip().lower() in ("1", "yes", "true", "on")


def parse_args(name: str, doc: str, add_args: Callable[[argparse.ArgumentParser], None],
               defaults: Dict[str, Any], quick_defaults: Dict[str, Any],
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse an experiment's command line.

    ``defaults`` apply normally, ``quick_defaults`` override them with ``--quick``
    or QUICK=1; anything given on the command line wins over both.
    """
    ap = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", default=quick_from_env(),
                    help="a run of under two minutes (also QUICK=1 in the environment)")
    ap.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    ap.add_argument("--out", type=Path, default=RESULTS_ROOT,
                    help=f"results root (default {RESULTS_ROOT.relative_to(REPO)}/)")
    ap.add_argument("--dataplane", choices=["auto", "ebpf", "python"], default="auto",
                    help="the forwarders' data plane (default auto: the kernel fast path where "
                         "it loads; config.json says which ran)")
    add_args(ap)
    pre, _ = ap.parse_known_args(argv)
    merged = dict(defaults)
    if pre.quick:
        merged.update(quick_defaults)
    ap.set_defaults(**merged)
    args = ap.parse_args(argv)
    return args


def parse_list(text: str, kind: Callable[[str], Any] = float) -> List[Any]:
    """'50,100,200' -> [50.0, 100.0, 200.0]."""
    if isinstance(text, (list, tuple)):
        return [kind(x) for x in text]
    return [kind(x) for x in str(text).replace(" ", "").split(",") if x]


def seed_all(seed: int) -> random.Random:
    random.seed(seed)
    try:
        import numpy
        numpy.random.seed(seed % (2 ** 32))
    except ImportError:
        pass
    return random.Random(seed)


def require_root(name: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"{name}: needs root (network namespaces, Mininet): run it with sudo")


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------

class Progress:
    """Step lines on stderr: ``[failure  12.3s] (3/7) cut link e1-a1``."""

    def __init__(self, name: str, total: Optional[int] = None, stream=sys.stderr) -> None:
        self.name = name
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()
        self.stream = stream
        self.lines: List[str] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def log(self, msg: str) -> None:
        line = f"[{self.name} {self.elapsed():6.1f}s] {msg}"
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def step(self, msg: str) -> None:
        self.done += 1
        if self.total:
            eta = ""
            if 1 < self.done <= self.total:
                per = self.elapsed() / (self.done - 1)
                eta = f", about {per * (self.total - self.done + 1):.0f}s left"
            self.log(f"({self.done}/{self.total}{eta}) {msg}")
        else:
            self.log(msg)


# ---------------------------------------------------------------------------
# Results folder
# ---------------------------------------------------------------------------

def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


class Results:
    """results/<name>/<timestamp>/ and results/<name>/latest."""

    def __init__(self, name: str, args: argparse.Namespace, root: Optional[Path] = None) -> None:
        self.name = name
        base = Path(root or getattr(args, "out", None) or RESULTS_ROOT) / name
        base.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        d, i = base / stamp, 1
        while d.exists():
            i += 1
            d = base / f"{stamp}-{i}"
        d.mkdir()
        self.dir = d
        self.started = time.time()
        self.config: Dict[str, Any] = {
            "experiment": name,
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": sys.argv,
            "quick": bool(getattr(args, "quick", False)),
            "seed": getattr(args, "seed", None),
            "params": {k: v for k, v in vars(args).items() if k not in ("out",)},
            "git_commit": git_commit(),
            "machine": machine_facts(),
        }
        self.write_config()
        self._link_latest()
        self._files: Dict[str, Any] = {}

    def _link_latest(self) -> None:
        link = self.dir.parent / "latest"
        tmp = self.dir.parent / f".latest-{os.getpid()}"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(self.dir.name)
            os.replace(tmp, link)
        except OSError:
            pass

    def path(self, name: str) -> Path:
        return self.dir / name

    def write_config(self, **extra: Any) -> None:
        self.config.update(extra)
        self.path("config.json").write_text(json.dumps(_jsonable(self.config), indent=1) + "\n")

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path(name)
        p.write_text(json.dumps(_jsonable(obj), indent=1) + "\n")
        return p

    def jsonl(self, name: str) -> "JsonLines":
        if name not in self._files:
            self._files[name] = JsonLines(self.path(name))
        return self._files[name]

    def csv(self, name: str, fields: Sequence[str]) -> "CsvWriter":
        if name not in self._files:
            self._files[name] = CsvWriter(self.path(name), fields)
        return self._files[name]

    def write_csv(self, name: str, rows: Iterable[dict], fields: Optional[Sequence[str]] = None) -> Path:
        rows = list(rows)
        if fields is None:
            fields = list(dict.fromkeys(k for r in rows for k in r))
        w = CsvWriter(self.path(name), fields)
        for r in rows:
            w.row(r)
        w.close()
        return self.path(name)

    @contextmanager
    def figure(self, name: str, nrows: int = 1, ncols: int = 1, size=(8, 4.5), **kw) -> Iterator[Any]:
        """Yields (fig, axes); saves <name>.png (Agg backend) when the block ends."""
        plt = pyplot()
        fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kw)
        try:
            yield fig, axes
            fig.tight_layout()
            fig.savefig(self.path(name if name.endswith(".png") else name + ".png"), dpi=110)
        finally:
            plt.close(fig)

    def summary(self, headline: Dict[str, Any], markdown: str) -> None:
        """summary.json (headline numbers + where the files are) and summary.md."""
        for f in self._files.values():
            f.close()
        files = sorted(p.name for p in self.dir.iterdir() if p.is_file())
        out = {"experiment": self.name, "quick": self.config.get("quick"),
               "duration_s": round(time.time() - self.started, 1), **headline,
               "files": sorted(set(files) | {"summary.json", "summary.md"})}
        out["loadavg_start"] = self.config.get("machine", {}).get("loadavg")
        out["loadavg_end"] = loadavg()
        self.path("summary.json").write_text(json.dumps(_jsonable(out), indent=1) + "\n")
        la0, la1 = out["loadavg_start"], out["loadavg_end"]
        cpus = os.cpu_count() or 1
        if (la0 and la0[0] > 4 * cpus) or (la1 and la1[0] > 4 * cpus):
            markdown = markdown.rstrip() + (
                f"\n\n*Machine load: 1-minute load average {la0[0] if la0 else '?'} at the start, "
                f"{la1[0] if la1 else '?'} at the end, on {cpus} CPUs: other work was running; "
                "absolute numbers are noisy, compare the side-by-side ratios.*\n")
        self.path("summary.md").write_text(markdown.rstrip() + "\n")

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class JsonLines:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "a", encoding="utf-8")

    def write(self, obj: Any) -> None:
        self.f.write(json.dumps(_jsonable(obj), sort_keys=True) + "\n")

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


class CsvWriter:
    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = path
        self.fields = list(fields)
        self.f = open(path, "w", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.f, fieldnames=self.fields, extrasaction="ignore")
        self.w.writeheader()

    def row(self, r: dict) -> None:
        self.w.writerow({k: _cell(v) for k, v in r.items()})

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return ""
        return round(v, 6)
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

def lat_stats(values: Sequence[float], prefix: str = "") -> Dict[str, Optional[float]]:
    """n, mean, p50, p90, p99, max of a list (same unit in, same unit out)."""
    v = list(values)
    out = {"n": len(v), "mean": (sum(v) / len(v)) if v else None, "p50": percentile(v, 50),
           "p90": percentile(v, 90), "p95": percentile(v, 95), "p99": percentile(v, 99),
           "max": max(v) if v else None}
    return {prefix + k: (round(x, 4) if isinstance(x, float) else x) for k, x in out.items()}


def rnd(x: Optional[float], nd: int = 3) -> Optional[float]:
    return None if x is None else round(x, nd)


def fmt(x: Any, nd: int = 1, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}{unit}"
    return f"{x}{unit}"


def md_head(title: str, quick: bool, error: Optional[str]) -> List[str]:
    """summary.md's first lines: the title with the kind of run, and an early stop."""
    md = [f"# {title} ({'QUICK' if quick else 'default'} run)", ""]
    if error:
        md += [f"**The run stopped early: {error}**", ""]
    return md


def md_table(rows: List[List[Any]], header: List[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(str(c) if c is not None else "n/a" for c in r) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------

class _LabOut:
    """DmscLab's out= callback: every line to the results folder, and on the progress stream."""

    def __init__(self, res: Results, progress: Progress) -> None:
        self.f = open(res.path("lab.log"), "a", encoding="utf-8")
        self.progress = progress

    def __call__(self, line: str) -> None:
        self.f.write(line + "\n")
        self.f.flush()
        self.progress.log("lab: " + line.lstrip("* "))


def build_topology(spec: str, shop: bool = True):
    """'fat-tree:4', 'leaf-spine:2x4x2' (spines x leaves x hosts per leaf), 'linear:4[x1]'."""
    from topologies.lab import builders
    kind, _, arg = spec.partition(":")
    try:
        if kind in ("fat-tree", "fattree", "fat_tree"):
            return builders.fat_tree(int(arg or 4), shop=shop)
        if kind in ("leaf-spine", "leafspine", "leaf_spine"):
            s, l, h = (int(x) for x in (arg or "2x4x2").split("x"))
            return builders.leaf_spine(s, l, h, shop=shop)
        if kind == "linear":
            parts = (arg or "4").split("x")
            return builders.linear(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1, shop=shop)
    except ValueError as exc:
        raise SystemExit(f"bad topology {spec!r}: {exc}")
    raise SystemExit(f"unknown topology {spec!r}: use fat-tree:K, leaf-spine:SxLxH or linear:N[xH]")


def start_lab(topo, res: Results, progress: Progress, *, run_kind: str, attempts: int = 2,
              configure: Optional[Callable[[Any], None]] = None, **kw):
    """DmscLab(topo, ...).start() with its output kept in lab.log; one retry on a failed start.

    A 2-core machine shared with other work now and then misses the convergence
    deadline; a second start usually succeeds.
    """
    from topologies.proc import LabError
    from topologies.lab.net import DmscLab
    last: Optional[BaseException] = None
    for i in range(attempts):
        lab = DmscLab(topo, out=_LabOut(res, progress), run_kind=run_kind, **kw)
        if configure is not None:
            configure(lab)
        try:
            return lab.start()
        except LabError as exc:   # start() has stopped the lab already
            last = exc
            progress.log(f"lab start failed ({exc}); {'retrying' if i + 1 < attempts else 'giving up'}")
    raise last  # type: ignore[misc]


def settle(lab, timeout: float = 60.0, settle_s: float = 1.0) -> float:
    """Wait until the lab is converged (link-state databases agree, no FIB change for
    settle_s, every forwarder answers); returns the seconds it took.

    A 2-core machine saturated by a previous measurement can starve the Python
    forwarders long enough for adjacencies to flap; measuring DMSC before it has
    converged again would measure the flap, not the data plane.
    """
    t0 = time.monotonic()
    problems: List[str] = ["not checked"]
    while time.monotonic() - t0 < timeout:
        problems = lab.convergence_problems(settle_s=settle_s, full=False)
        if not problems:
            return time.monotonic() - t0
        time.sleep(0.25)
    raise TimeoutError(f"the lab did not settle within {timeout:.0f}s: {'; '.join(problems[:2])}")


def lab_facts(lab) -> dict:
    return {"lab_run_dir": str(lab.run_dir), "lab_routing": lab.routing,
            "lab_timings": dict(lab.timings), "lab_warnings": list(lab.warnings),
            "topology": lab.describe(), "hello_ms": lab.hello_ms, "dead_ms": lab.dead_ms,
            "telemetry_interval_s": lab.telemetry_s, "scsc": lab.scsc is not None,
            "dataplane": lab.dataplane_in_use}


def issue_identity(lab, prefix: str, app: str, node: str) -> Optional[Path]:
    """An SPA authorization for `prefix` from the lab's authority (spa/services/<app>-<node>.key)."""
    if lab.run_dir is None or not (lab.run_dir / "spa" / "authority.pub").exists():
        return None
    key = lab.identity_of(app, node)
    if key is not None and key.exists():
        return key
    import contextlib
    import io
    from forwarder.spa import tool as spa_tool
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = spa_tool.main(["--dir", str(lab.run_dir / "spa"), "issue", prefix, "--new-service",
                            f"{app}-{node}", "--days", "2"])
    if rc != 0:
        raise RuntimeError(f"spa_tool issue {prefix} failed: {buf.getvalue()[-500:]}")
    return lab.identity_of(app, node)


class LabProc(Proc):
    """A process of ours in a lab host (``ip netns exec``), recorded for ``make clean``."""

    def __init__(self, lab, node: str, name: str, argv: List[str]) -> None:
        super().__init__(lab.netns[node], lab.run_dir / node, name, lab.records,
                         python=lab.python, argv=argv)
        self.node = node
        self.name = name

    def start(self) -> "LabProc":
        self.spawn()
        return self


class ProcSet:
    """Our processes in a lab: started through LabProc, stopped together (before lab.stop())."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.procs: List[Any] = []

    def start(self, node: str, name: str, argv: List[str]):
        p = LabProc(self.lab, node, name, argv).start()
        self.procs.append(p)
        return p

    def python(self, node: str, name: str, module: str, *args: str):
        return self.start(node, name, [self.lab.python, "-m", module, *args])

    def stop(self, procs: Optional[List[Any]] = None) -> None:
        targets = list(self.procs if procs is None else procs)
        stop_all(targets)
        self.procs = [p for p in self.procs if p not in targets]


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so `finally` blocks stop the lab."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def ns_run(lab, node: str, argv: List[str], timeout: float = 60.0, check: bool = True
           ) -> subprocess.CompletedProcess:
    """Run a short command in a lab host's namespace (topologies.proc.run)."""
    return run(argv, netns=lab.netns[node], check=check, timeout=timeout)


class Experiment:
    """What every experiment holds -- its parameters (`a`), results folder, progress
    log, seeded random generator, and the lab and helper processes that teardown()
    stops -- so that run_main can drive any of them: run(), teardown(), report()."""

    def __init__(self, args, res: Results, progress: Progress) -> None:
        self.a = args
        self.res = res
        self.p = progress
        self.rng = seed_all(args.seed)
        self.lab = None
        self.procs: Optional[ProcSet] = None

    def teardown(self) -> None:
        if self.procs is not None:
            self.procs.stop()
        if self.lab is not None:
            self.lab.stop()


def run_main(name: str, doc: str, add_args, defaults, quick, experiment, argv=None, check=None) -> int:
    """The main of every experiment: run it; whatever happens, tear the lab down and
    write the configuration; then report what was measured, even after a failure
    (exit status 1 then). `check(args)` may refuse bad parameters first."""
    args = parse_args(name, doc, add_args, defaults, quick, argv)
    require_root(name)
    if check is not None:
        check(args)
    install_signal_handlers()
    res = Results(name, args)
    progress = Progress(name)
    progress.log(f"results in {res.dir}")
    exp = experiment(args, res, progress)
    error = None
    try:
        exp.run()
    except (Exception, KeyboardInterrupt) as exc:  # report what was measured, then fail
        error = f"{type(exc).__name__}: {exc}"
        progress.log(f"FAILED: {error}")
    finally:
        exp.teardown()
        res.write_config(progress=progress.lines)
    exp.report(error)
    progress.log(f"{'FAILED' if error else 'done'}: {res.dir}/summary.md")
    print((res.dir / "summary.md").read_text())
    return 1 if error else 0
