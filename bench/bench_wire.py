#!/usr/bin/env python3
"""Wire codec benchmark: how fast forwarder.dataplane.wire.decode gets through packets.

  * fuzz_decodes_per_s: the fuzz corpus of tests/test_wire.py (random bytes and
    mutated valid packets, 100,000 inputs, fixed seed), every input decoded
    once; most are refused with a DecodeError, which is the work a forwarder
    does on garbage. The test checks that nothing but DecodeError comes out;
    how fast is this figure (it depends on the machine and its load).
  * valid_decodes_per_s / valid_encodes_per_s: the corpus's 200 valid seed
    packets, decoded and encoded again and again.

The corpus is built before the clock starts. Best of --repeat runs, with the
load average beside it (this is a shared machine). Needs no root.

Writes bench/results/wire.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from forwarder.dataplane.wire import DecodeError, decode, encode  # noqa: E402
from test_wire import FUZZ_CASES, _seed_packets, fuzz_inputs  # noqa: E402
from topologies.measure import write_result  # noqa: E402

RESULTS = REPO / "bench" / "results"


def timed(fn, repeat: int) -> float:
    """Best wall-clock seconds of `repeat` runs of fn()."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs of each measurement (best kept)")
    ap.add_argument("--valid-rounds", type=int, default=200, help="passes over the 200 valid packets")
    ap.add_argument("--out", type=Path, default=RESULTS / "wire.json")
    args = ap.parse_args()

    corpus = list(fuzz_inputs())
    valid = _seed_packets(random.Random(0xD115C), 200)
    packets = [decode(v) for v in valid]

    def fuzz() -> None:
        for data in corpus:
            try:
                decode(data)
            except DecodeError:
                pass

    def valid_decode() -> None:
        for _ in range(args.valid_rounds):
            for data in valid:
                decode(data)

    def valid_encode() -> None:
        for _ in range(args.valid_rounds):
            for p in packets:
                encode(p)

    load_start = [round(x, 2) for x in os.getloadavg()]
    fuzz_s = timed(fuzz, args.repeat)
    dec_s = timed(valid_decode, args.repeat)
    enc_s = timed(valid_encode, args.repeat)
    n_valid = args.valid_rounds * len(valid)
    result = {"bench": "wire", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                       "python": platform.python_version()},
              "method": __doc__.strip(), "repeat": args.repeat,
              "loadavg_at_start": load_start,
              "fuzz_cases": FUZZ_CASES, "fuzz_s": round(fuzz_s, 3),
              "fuzz_decodes_per_s": round(FUZZ_CASES / fuzz_s),
              "valid_decodes": n_valid, "valid_decodes_per_s": round(n_valid / dec_s),
              "valid_encodes_per_s": round(n_valid / enc_s),
              "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(f"fuzz corpus: {FUZZ_CASES} inputs in {fuzz_s:.2f} s ({result['fuzz_decodes_per_s']}/s); "
          f"valid packets: {result['valid_decodes_per_s']} decodes/s, "
          f"{result['valid_encodes_per_s']} encodes/s (load average {load_start})")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
