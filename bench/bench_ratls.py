"""RA-TLS core benchmark: identity creation and certificate verification times (sim provider), and parsing.

    python bench/bench_ratls.py [--n 500]

Prints medians and p95 over N runs. Target: sim verification median under 2 ms on a 2-core machine.
(There is no pure-Python parser to compare with: every parse goes through the one C parser.)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ratls


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def report(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    print(f"{name:<44} median {statistics.median(ms):8.3f} ms   p95 {p95:8.3f} ms   (n={len(ms)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="runs per measurement")
    args = parser.parse_args()
    root = Path(ratls.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        ca = ratls.SimCA.init(tmp)
        make = lambda: ratls.Identity.create("sim", sim_ca=ca.path, measured_files=[root], measure_root=root)  # noqa: E731
        ident = make()
        policy = ratls.Policy(mrenclave=ident.mrenclave, allow_simulated=True, sim_root=ca.path,
                              allowed_tcb_statuses=("UpToDate", "Unknown"))
        der = ident.certificate_der
        gramine = Path(__file__).resolve().parents[1].parent / "shared/testdata/sgx/gramine/gramine-cert.der"
        print(f"certificate size: {len(der)} B (sim), quote {len(ratls.inspect_certificate(der).quote)} B")
        report("identity creation (sim, incl. self-check)", timed(make, max(20, args.n // 10)))
        report("verify_certificate (sim)", timed(lambda: ratls.verify_certificate(der, policy), args.n))
        report("inspect_certificate (parse only)", timed(lambda: ratls.inspect_certificate(der), args.n))
        if gramine.exists():
            gder = gramine.read_bytes()
            gpolicy = ratls.Policy(allow_debug=True, allowed_tcb_statuses=("Unknown",))
            report("verify_certificate (real Gramine cert)", timed(lambda: ratls.verify_certificate(gder, gpolicy),
                                                                    args.n))
        quote = ratls.inspect_certificate(der).quote
        report("parse_quote", timed(lambda: ratls.parse_quote(quote), args.n))


if __name__ == "__main__":
    main()
