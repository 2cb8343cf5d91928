"""The sidecar experiment's report: medians, the communication layer's CPU, the targets
of the L4 mode, where each mode wins and loses, plots and summary.md.

Pure functions of the experiment's recorded runs (experiments/sidecar.py), so a
results folder's runs.csv says everything summary.json says.
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional

from .common import fmt, md_head, md_table, rnd

__all__ = ["fmt", "report", "table_of", "targets"]

LABELS = {"direct": "direct", "sidecar": "sidecar (nginx)", "sidecar_haproxy": "sidecar (HAProxy)",
          "dmsc_l7": "dmsc_l7 (adapters)", "dmsc_l4": "dmsc_l4 (SG as gateway)"}
SIDECARS = ("sidecar", "sidecar_haproxy")


def comm_cpu(runs: List[dict]) -> None:
    """Each run's communication-layer CPU per 1,000 requests: its processes, plus the
    softirq time per 1,000 requests above direct's in the same round, service and kind
    (docs in experiments/sidecar.py). Written into the rows (`comm_cpu_ms_per_1k`)."""
    base = {(r["round"], r["backend"], r["kind"]): r.get("softirq_ms_per_1k")
            for r in runs if r["mode"] == "direct"}
    for r in runs:
        proc, soft = r.get("proc_cpu_ms_per_1k"), r.get("softirq_ms_per_1k")
        ref = base.get((r["round"], r["backend"], r["kind"]))
        if r["mode"] == "direct":
            r["softirq_excess_ms_per_1k"], r["comm_cpu_ms_per_1k"] = 0.0, 0.0
        elif proc is None or soft is None or ref is None:
            r["softirq_excess_ms_per_1k"], r["comm_cpu_ms_per_1k"] = None, proc
        else:
            r["softirq_excess_ms_per_1k"] = round(max(0.0, soft - ref), 3)
            r["comm_cpu_ms_per_1k"] = round(proc + r["softirq_excess_ms_per_1k"], 3)


def _med(runs: List[dict], b: str, m: str, kind: str, key: str) -> Optional[float]:
    vals = [r[key] for r in runs if r["backend"] == b and r["mode"] == m and r["kind"] == kind
            and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table_of(runs: List[dict], backends: List[str], modes: List[str]) -> Dict[str, Dict[str, dict]]:
    """backend -> mode -> medians over rounds."""
    out: Dict[str, Dict[str, dict]] = {}
    for b in backends:
        for m in modes:
            lat = lambda key: _med(runs, b, m, "latency", key)        # noqa: E731
            sat = lambda key: _med(runs, b, m, "saturation", key)     # noqa: E731
            out.setdefault(b, {})[m] = {
                "p50_us": lat("p50_us"), "p90_us": lat("p90_us"), "p99_us": lat("p99_us"),
                "latency_rps": lat("rps"), "rps": sat("rps"), "sat_p50_us": sat("p50_us"),
                "sat_p99_us": sat("p99_us"), "comm_cpu_ms_per_1k": sat("comm_cpu_ms_per_1k"),
                "proc_cpu_ms_per_1k": sat("proc_cpu_ms_per_1k"),
                "softirq_ms_per_1k": sat("softirq_ms_per_1k"),
                "softirq_excess_ms_per_1k": sat("softirq_excess_ms_per_1k"),
                "bpf_ms_per_1k": sat("bpf_ms_per_1k"),
                "machine_cpu_ms_per_1k": sat("machine_cpu_ms_per_1k"),
                "errors": sum(r["errors"] for r in runs if r["backend"] == b and r["mode"] == m)}
    return out


def _best_sidecar(t: Dict[str, dict], key: str, low: bool) -> Optional[float]:
    vals = [t[m][key] for m in SIDECARS if m in t and t[m][key] is not None]
    if not vals:
        return None
    return min(vals) if low else max(vals)


def targets(table: Dict[str, Dict[str, dict]]) -> Dict[str, List[dict]]:
    """The L4 mode against the issue's targets, per service: measured, never asserted."""
    out: Dict[str, List[dict]] = {}
    for b, t in table.items():
        x, d = t.get("dmsc_l4"), t.get("direct")
        if not x or not d:
            continue
        rows = []

        def add(what: str, value: Optional[float], bound: Optional[float], ok) -> None:
            rows.append({"target": what, "dmsc_l4": rnd(value, 1), "bound": rnd(bound, 1),
                         "met": bool(ok(value, bound)) if value is not None and bound is not None
                         else None})
        sc_p50 = _best_sidecar(t, "p50_us", True)
        add("p50 below the better sidecar's", x["p50_us"], sc_p50, lambda v, c: v < c)
        add("p50 at most 1.3 x direct", x["p50_us"], d["p50_us"] and 1.3 * d["p50_us"],
            lambda v, c: v <= c)
        if b == "null":
            add("requests/s at least the better sidecar's", x["rps"],
                _best_sidecar(t, "rps", False), lambda v, c: v >= c)
        else:
            add("requests/s at least 0.9 x direct", x["rps"], d["rps"] and 0.9 * d["rps"],
                lambda v, c: v >= c)
        add("communication CPU per 1k requests at most the better sidecar's",
            x["comm_cpu_ms_per_1k"], _best_sidecar(t, "comm_cpu_ms_per_1k", True),
            lambda v, c: v <= c)
        out[b] = rows
    return out


def verdicts(table: Dict[str, Dict[str, dict]], memory: dict, per: Optional[dict]) -> tuple:
    wins, losses = [], []
    for b, t in table.items():
        d = t["direct"]
        for m in ("dmsc_l4", "dmsc_l7"):
            x = t.get(m)
            if not x:
                continue
            for key, what, unit, low in (("p50_us", "latency p50", "us", True),
                                         ("p99_us", "latency p99", "us", True),
                                         ("rps", "throughput", "req/s", False),
                                         ("comm_cpu_ms_per_1k", "communication CPU", "ms/1k req", True)):
                sc = _best_sidecar(t, key, low)
                if x[key] is None or sc is None:
                    continue
                better = x[key] < sc if low else x[key] > sc
                (wins if better else losses).append(
                    f"{b}, {m}: {what} {x[key]:.0f} {unit} vs {sc:.0f} for the better sidecar "
                    f"and {d[key] or 0:.0f} direct")
    if memory:
        sm = min(memory[m]["pss_mb"] for m in SIDECARS if m in memory)
        dm = memory["dmsc_l4"]["pss_mb"]
        (wins if dm < sm else losses).append(
            f"memory as deployed: DMSC {dm:.0f} MB ({memory['dmsc_l4']['forwarders']} forwarders) vs "
            f"{sm:.0f} MB for the lighter sidecar mesh ({memory['sidecar']['proxies']} nginx, "
            f"{memory['sidecar_haproxy']['proxies']} HAProxy proxies)")
    if per:
        c = per["cluster_at_max_pods"]
        wins.append(f"proxy count: sidecars grow with pods ({c['sidecar_proxies']} for {c['nodes']} "
                    f"nodes x {c['pods_per_node']} pods), DMSC gateways with nodes ({c['dmsc_sgs']})")
        (wins if c["dmsc_lib_mb"] < c["sidecar_mb"] else losses).append(
            f"memory at {c['pods_per_node']} pods/node: DMSC SGs {c['dmsc_lib_mb']:.0f} MB vs sidecars "
            f"{c['sidecar_mb']:.0f} MB for {c['nodes']} nodes")
    return wins, losses


def per_unit(scaling: List[dict], nodes: int) -> Optional[dict]:
    if not scaling:
        return None
    last = scaling[-1]
    p = last["pods_per_node"]
    m_sc = last["sidecar_pss_mb"] / p
    m_sg = last["dmsc_lib_pss_mb"]
    m_ad = (last["dmsc_http_pss_mb"] - last["dmsc_lib_pss_mb"]) / p
    return {"rows": scaling, "sidecar_mb_per_pod": rnd(m_sc, 2), "sg_mb_per_node": rnd(m_sg, 2),
            "http_adapter_mb_per_pod": rnd(m_ad, 2), "nodes": nodes,
            "pods_per_node_where_sidecars_outweigh_one_sg": rnd(m_sg / m_sc if m_sc else None, 2),
            "sg_growth_mb_from_1_to_max_pods": rnd(last["dmsc_lib_pss_mb"] - scaling[0]["dmsc_lib_pss_mb"], 2),
            "cluster_at_max_pods": {"pods_per_node": p, "nodes": nodes, "sidecar_proxies": nodes * p,
                                    "sidecar_mb": rnd(nodes * p * m_sc, 1), "dmsc_sgs": nodes,
                                    "dmsc_lib_mb": rnd(nodes * m_sg, 1),
                                    "dmsc_http_mb": rnd(nodes * (m_sg + p * m_ad), 1)}}


def headline(table: Dict[str, Dict[str, dict]], modes: List[str], first: str) -> Dict[str, Any]:
    """summary.json's flat keys: <mode>_[<service>_]p50_us ... (the first service bare);
    dmsc_* are dmsc_l7's."""
    head: Dict[str, Any] = {}
    for b, t in table.items():
        pre = "" if b == first else f"{b}_"
        for m in modes:
            d = t[m]
            names = [m] + (["dmsc"] if m == "dmsc_l7" else [])
            for n in names:
                head[f"{n}_{pre}p50_us"] = rnd(d["p50_us"], 1)
                head[f"{n}_{pre}p99_us"] = rnd(d["p99_us"], 1)
                head[f"{n}_{pre}rps"] = rnd(d["rps"], 1)
                head[f"{n}_{pre}comm_cpu_ms_per_1k"] = rnd(d["comm_cpu_ms_per_1k"], 2)
    return head


def report(exp, error: Optional[str]) -> None:
    from .sidecar import HEADLINE, MODES
    comm_cpu(exp.runs)
    exp.res.write_csv("runs.csv", exp.runs)
    backends = getattr(exp, "backends", [])
    table = table_of(exp.runs, backends, MODES)
    head: Dict[str, Any] = {"error": error} if error else {}
    head.update(headline(table, MODES, HEADLINE))
    head["by_backend"] = table
    head["headline_backend"] = HEADLINE
    head["dmsc_dataplane"] = (exp.lab.dataplane_in_use.get("mode") if exp.lab is not None else None)
    head["targets"] = targets(table)
    mem = exp.memory
    if mem:
        head["comm_memory_mb"] = {m: mem[m]["pss_mb"] for m in MODES}
        head["comm_memory_mb"].update({"dmsc_sg": mem["dmsc_l4"]["split"]["sg"]["pss_mb"],
                                       "dmsc_sr": mem["dmsc_l4"]["split"]["sr"]["pss_mb"],
                                       "dmsc": mem["dmsc_l7"]["pss_mb"]})
        head["comm_processes"] = {m: mem[m]["processes"] for m in MODES}
        for m in SIDECARS:   # one proxy per pod: its memory
            head[f"{m}_mb_per_proxy"] = rnd(mem[m]["pss_mb"] / mem[m]["proxies"], 2) \
                if mem[m]["proxies"] else None
        head["proxies"] = {"direct": 0, "sidecar": mem["sidecar"]["proxies"],
                           "sidecar_haproxy": mem["sidecar_haproxy"]["proxies"],
                           "dmsc_sg": mem["dmsc_l4"]["sg"], "dmsc_sr": mem["dmsc_l4"]["sr"]}
    head["idle_comm_cpu_s_per_s"] = exp.idle
    per = per_unit(exp.scaling, len(exp.lab.topo.sgs)) if exp.lab is not None else None
    if per:
        head["scaling"] = per
    head["wins"], head["losses"] = verdicts(table, mem, per)
    plot(exp, table)
    exp.res.summary(head, markdown(exp, head, table, per, error))


def markdown(exp, head: dict, table: dict, per: Optional[dict], error: Optional[str]) -> str:
    from .sidecar import MODES
    a = exp.a
    md = md_head("Sidecar experiment", a.quick, error)
    if exp.lab is not None and hasattr(exp, "client"):
        md += [f"{a.topology}, lab run `{exp.lab.run_dir}`, DMSC data plane "
               f"**{head.get('dmsc_dataplane')}**. Client pod `bcli` behind {exp.client}, server pods "
               f"`bcart` and `bnull` behind {exp.server} (across the core). wrk in the client pod: "
               f"latency with 1 connection, saturation with {a.conns} connections, {a.duration:g} s "
               f"per run, {a.rounds} round(s), modes interleaved; medians over rounds.", ""]
    for b, t in table.items():
        what = ("the shop's cart (a Python HTTP server): GET /items" if b == "cart" else
                "the null service (nginx answering 200 ok): the communication layer alone")
        md += [f"## {b}: {what}", "",
               md_table([[LABELS[m], fmt(t[m]["p50_us"], 0), fmt(t[m]["p90_us"], 0), fmt(t[m]["p99_us"], 0),
                          fmt(t[m]["rps"], 0), fmt(t[m]["sat_p99_us"], 0), fmt(t[m]["proc_cpu_ms_per_1k"], 1),
                          fmt(t[m]["softirq_excess_ms_per_1k"], 1), fmt(t[m]["comm_cpu_ms_per_1k"], 1),
                          fmt(t[m]["bpf_ms_per_1k"], 2), fmt(t[m]["machine_cpu_ms_per_1k"], 1),
                          t[m]["errors"]] for m in MODES],
                        ["mode", "p50 us", "p90 us", "p99 us", "req/s at saturation",
                         "p99 us at saturation", "processes ms/1k", "softirq above direct ms/1k",
                         "comm-layer CPU ms/1k", "of which eBPF ms/1k", "machine CPU ms/1k",
                         "errors"]), ""]
    md += ["Communication-layer CPU = the mode's processes (nginx or HAProxy sidecars; every "
           "forwarder, plus for dmsc_l7 the SG adapters), utime + stime from /proc/<pid>/stat, "
           "plus the machine's softirq time (/proc/stat) per 1,000 requests above the direct "
           "mode's in the same round: the kernel runs the SGs' eBPF programs, veth and loopback "
           "hops in softirq and charges that time to no process. This kernel samples softirq "
           "time at each tick (no IRQ time accounting), so it is a statistical figure; the eBPF "
           "column is the programs' own run time from kernel.bpf_stats_enabled.", ""]
    if head.get("targets"):
        md += ["## dmsc_l4 against its targets", ""]
        for b, rows in head["targets"].items():
            md += [f"### {b}", "", md_table([[r["target"], fmt(r["dmsc_l4"], 1), fmt(r["bound"], 1),
                                              {True: "met", False: "missed", None: "-"}[r["met"]]]
                                             for r in rows], ["target", "dmsc_l4", "bound", ""]), ""]
    mem = exp.memory
    if mem:
        md += ["## Communication layer as deployed", "",
               md_table([[LABELS[m], mem[m].get("processes", 0), fmt(mem[m]["pss_mb"], 1),
                          f"{exp.idle.get(m, 0):.3f}"] for m in MODES],
                        ["mode", "processes", "memory PSS MB", "idle CPU s/s"]), "",
               "DMSC runs a forwarder on every node (SRs included), which a deployment on real "
               "routers would not count on the hosts; the sidecar meshes forward in the kernel "
               "on the routers.", ""]
    if per:
        md += ["## Scaling with pods per node (measured on one node)", "",
               md_table([[r["pods_per_node"], r["sidecar_proxies"], fmt(r["sidecar_pss_mb"], 1),
                          r["dmsc_lib_proxies"], fmt(r["dmsc_lib_pss_mb"], 1), r["dmsc_http_proxies"],
                          fmt(r["dmsc_http_pss_mb"], 1)] for r in per["rows"]],
                        ["pods/node", "sidecars", "sidecar MB", "DMSC SG", "SG MB",
                         "SG + adapters", "SG + adapters MB"]), ""]
    md += ["## Where DMSC wins", ""] + [f"* {w}" for w in head.get("wins", [])] + [""]
    md += ["## Where DMSC loses", ""] + [f"* {l}" for l in head.get("losses", [])] + [""]
    md.append("Plots: `sidecar_latency.png`, `sidecar_throughput.png`, `sidecar_cpu.png`, "
              "`sidecar_scaling.png`. Every wrk output is in `wrk/`, every run in `runs.csv`.")
    return "\n".join(md)


def plot(exp, table: Dict[str, Dict[str, dict]]) -> None:
    from .sidecar import MODES
    res = exp.res
    if table:
        bs = list(table)
        x = list(range(len(MODES)))
        with res.figure("sidecar_latency", ncols=len(bs), size=(6 * len(bs), 4)) as (fig, ax):
            for i, b in enumerate(bs):
                for j, key in enumerate(("p50_us", "p90_us", "p99_us")):
                    ax[0][i].bar([v + (j - 1) * 0.27 for v in x], [table[b][m][key] or 0 for m in MODES],
                                 width=0.27, label=key[:3])
                ax[0][i].set_xticks(x, MODES, rotation=20)
                if any(table[b][m]["p50_us"] for m in MODES):
                    ax[0][i].set_yscale("log")
                ax[0][i].set_ylabel("latency, 1 connection (us)")
                ax[0][i].set_title(b)
                ax[0][i].legend()
        with res.figure("sidecar_throughput", ncols=len(bs), size=(6 * len(bs), 4)) as (fig, ax):
            for i, b in enumerate(bs):
                ax[0][i].bar(MODES, [table[b][m]["rps"] or 0 for m in MODES])
                ax[0][i].set_xticks(x, MODES, rotation=20)
                ax[0][i].set_ylabel(f"req/s at saturation ({exp.a.conns} connections)")
                ax[0][i].set_title(b)
        with res.figure("sidecar_cpu", ncols=len(bs), size=(6 * len(bs), 4)) as (fig, ax):
            for i, b in enumerate(bs):
                proc = [table[b][m]["proc_cpu_ms_per_1k"] or 0 for m in MODES]
                soft = [table[b][m]["softirq_excess_ms_per_1k"] or 0 for m in MODES]
                ax[0][i].bar(x, proc, label="processes")
                ax[0][i].bar(x, soft, bottom=proc, label="softirq above direct")
                ax[0][i].set_xticks(x, MODES, rotation=20)
                ax[0][i].set_ylabel("communication CPU, ms per 1,000 requests")
                ax[0][i].set_title(b)
                ax[0][i].legend()
    if exp.scaling:
        rows = exp.scaling
        xs = [r["pods_per_node"] for r in rows]
        with res.figure("sidecar_scaling", ncols=2, size=(11, 4.2)) as (fig, ax):
            for i, (what, ylabel) in enumerate((("proxies", "proxy processes per node"),
                                                ("pss_mb", "memory per node, PSS (MB)"))):
                for key, style, label in (("sidecar", "o-", "sidecars"), ("dmsc_lib", "o-", "DMSC SG"),
                                          ("dmsc_http", "o--", "DMSC SG + HTTP adapters")):
                    ax[0][i].plot(xs, [r[f"{key}_{what}"] for r in rows], style, label=label)
                ax[0][i].set_xlabel("pods per node")
                ax[0][i].set_ylabel(ylabel)
                ax[0][i].legend(fontsize=8)
