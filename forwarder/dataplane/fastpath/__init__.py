"""The in-kernel half of the data plane: tc eBPF programs (tcx ingress) that
repeat the pipeline's flow-table decisions (fp_ingress, network faces: forward
by name, or decapsulate an IPv4 packet carried by name) and carry a pod's IPv4
packets by name (fp_pod_ingress, pod-facing veths), and the code that loads and
feeds them.

The pipeline decides, the kernel repeats: `forwarder.dataplane.pipeline` says
which decisions may be repeated (its Offload action); the runtime
(`forwarder.runtime.offload`) installs them here and merges the kernel's
counters back. This is the only part of the data plane that touches the
kernel. Modules: `layout` (the maps' layouts: pure data, twin of fastpath.h),
`libbpf` (ctypes over Debian's libbpf.so.1: objects, pins, maps, tcx links,
BPF_PROG_TEST_RUN), `pins` (the bpffs pin root), `kernel` (FastPath,
FastPathMaps, available), `build` (compiles fastpath.bpf.c when it is stale).
What the programs check is specified in docs/protocol.md section 10.1.

Names are imported lazily, so `python -m forwarder.dataplane.fastpath.build`
and `.pins` run without importing the rest.
"""
from importlib import import_module

__all__ = ["FastPath", "FastPathMaps", "available", "layout"]


def __getattr__(name):
    if name in ("FastPath", "FastPathMaps", "available"):
        return getattr(import_module(".kernel", __name__), name)
    if name == "layout":
        return import_module(".layout", __name__)
    raise AttributeError(name)
