"""Compile fastpath.bpf.c into fastpath.bpf.o next to it, only when a source is newer.

    python -m forwarder.dataplane.fastpath.build [--force] [-o OBJECT]

Needs clang (14 is what Debian 12 has) and libbpf-dev (bpf/bpf_helpers.h):
``apt-get install -y --no-install-recommends clang llvm libbpf-dev``. Only UAPI
headers and libbpf's bpf_helpers.h/bpf_endian.h are used; no kernel headers.
DMSC_FASTPATH_OBJ overrides where the object goes (a read-only tree).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fastpath.bpf.c"
HEADERS = (HERE / "fastpath.h",)
OBJECT_NAME = "fastpath.bpf.o"
APT_HINT = "apt-get install -y --no-install-recommends clang llvm libbpf-dev"


class BuildError(RuntimeError):
    pass


def object_path() -> Path:
    env = os.environ.get("DMSC_FASTPATH_OBJ")
    return Path(env) if env else HERE / OBJECT_NAME


def multiarch_include() -> str:
    """Where asm/types.h lives on Debian (linux/types.h includes it)."""
    return f"/usr/include/{platform.machine()}-linux-gnu"


def compile_command(source: Path, out: Path, clang: str = "clang") -> List[str]:
    return [clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
            f"-I{multiarch_include()}", "-c", str(source), "-o", str(out)]


def is_stale(obj: Optional[Path] = None) -> bool:
    obj = obj or object_path()
    if not obj.exists():
        return True
    newest = max(p.stat().st_mtime for p in (SOURCE, *HEADERS))
    return obj.stat().st_mtime < newest


def check_toolchain() -> str:
    """The clang to use; BuildError saying what is missing otherwise."""
    clang = shutil.which("clang")
    if clang is None:
        raise BuildError(f"clang not found (needed to build {SOURCE.name}): {APT_HINT}")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise BuildError(f"libbpf-dev missing (/usr/include/bpf/bpf_helpers.h): {APT_HINT}")
    if not Path(multiarch_include(), "asm", "types.h").exists():
        raise BuildError(f"UAPI headers missing ({multiarch_include()}/asm/types.h): "
                         "apt-get install -y linux-libc-dev")
    return clang


def ensure_built(force: bool = False, out: Optional[Path] = None) -> Path:
    """Build the object if it is missing or older than its sources; return its path."""
    out = Path(out) if out else object_path()
    if not force and not is_stale(out):
        return out
    clang = check_toolchain()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fastpath.", suffix=".o", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(compile_command(SOURCE, Path(tmp), clang), capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise BuildError(f"clang failed ({proc.returncode}) on {SOURCE}:\n"
                             f"{proc.stderr.strip()}")
        os.replace(tmp, out)  # atomic: concurrent builders each install a whole object
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m forwarder.dataplane.fastpath.build", description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        stale = args.force or is_stale(args.output or object_path())
        path = ensure_built(args.force, args.output)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path} ({'built' if stale else 'up to date'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
