"""The measurement kit shared by the tests, the benchmarks and the experiments.

One definition each of: a percentile, a poll-until-true wait, the facts about
the machine that every result file carries (CPUs, kernel, Python, load average,
memory, git commit), and per-process CPU and memory from /proc. A figure
measured in one place and compared with a figure measured in another must
have been computed the same way.

Standard library only.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- waiting
def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
             what: str = "condition", retry_on: Tuple[Type[BaseException], ...] = ()) -> Any:
    """Poll predicate() until it returns something true; return that value.

    TimeoutError names `what` after `timeout` seconds. Exceptions of the types in
    `retry_on` (a node answering slowly) count as "not yet"; the last one is
    named in the TimeoutError. Nothing else is caught.
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except retry_on as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}"
                               + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


# ------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile, q in [0, 100]; None for no values."""
    v = sorted(values)
    if not v:
        return None
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


# ---------------------------------------------------------------- the machine
def git_commit() -> Optional[str]:
    """HEAD of the checkout, with '+dirty' when tracked files differ from it."""
    try:
        res = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        commit = res.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''}" if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> Optional[List[float]]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine_facts() -> Dict[str, Any]:
    """What a result needs to be read later: where, on what, at which commit, how loaded."""
    facts: Dict[str, Any] = {"hostname": platform.node(), "kernel": platform.release(),
                             "cpus": os.cpu_count(), "python": platform.python_version(),
                             "loadavg": loadavg(), "git_commit": git_commit(),
                             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        facts["mem_total_mb"] = round(int(mem[1]) / 1024)
    except (OSError, IndexError, ValueError):
        pass
    return facts


def machine_cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    vals = [int(x) for x in first[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / CLK_TCK


def machine_softirq_s() -> float:
    """Seconds all cores spent in softirq since boot (/proc/stat, 7th field). Without
    CONFIG_IRQ_TIME_ACCOUNTING the kernel samples it at each tick: a tick that finds
    a CPU serving a softirq (in process context too) counts there, not to the process."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(first[7]) / CLK_TCK


def write_result(out: Path, result: Dict[str, Any]) -> None:
    """A benchmark's JSON result file (bench/results/<name>.json), and a line saying so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def bpf_run_ns(names: Iterable[str]) -> Optional[int]:
    """Total run time (ns) of the loaded BPF programs with these names, as the kernel
    counts it with kernel.bpf_stats_enabled=1 (None when stats are off or bpftool
    is missing)."""
    try:
        res = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                             timeout=30)
        progs = json.loads(res.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    want = set(names)
    mine = [p for p in progs if p.get("name") in want]
    if mine and not any("run_time_ns" in p for p in mine):
        return None
    return sum(int(p.get("run_time_ns", 0)) for p in mine)


# --------------------------------------------------------------- /proc accounting
def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds (0 if it is gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem_kb(pid: int) -> Dict[str, int]:
    """{'rss_kb', 'pss_kb'} from /proc/<pid>/smaps_rollup (zeros if it is gone)."""
    out = {"rss_kb": 0, "pss_kb": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                out["rss_kb"] = int(rest.split()[0])
            elif key == "Pss":
                out["pss_kb"] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def children_map() -> Dict[int, List[int]]:
    """parent pid -> child pids, over the whole machine."""
    kids: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            data = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def with_descendants(pids: Iterable[int], kids: Optional[Dict[int, List[int]]] = None) -> List[int]:
    kids = kids if kids is not None else children_map()
    out, todo = [], [p for p in pids if p]
    seen = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def group_usage(pids: Iterable[int]) -> Dict[str, float]:
    """CPU seconds and memory summed over processes."""
    cpu, rss, pss, n = 0.0, 0, 0, 0
    for p in pids:
        m = proc_mem_kb(p)
        if not m["rss_kb"]:
            continue
        n += 1
        cpu += proc_cpu_s(p)
        rss += m["rss_kb"]
        pss += m["pss_kb"]
    return {"processes": n, "cpu_s": round(cpu, 3), "rss_mb": round(rss / 1024, 2),
            "pss_mb": round(pss / 1024, 2)}
