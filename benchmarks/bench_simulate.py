"""Benchmark the patch simulator: stars per minute for a patch with over a million stars.

Usage: ``python benchmarks/bench_simulate.py [--l 90 --b 30 --radius 3] [--write out.parquet]``

The default cone (l = 90, b = 30, radius 3 deg, r < 27.5, LSST 10-year errors) holds about
1.6 million stars with the default Galaxy model (1.8 million with one luminosity function
for all components). The time includes photometry and errors; writing Parquet is timed apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from photodist.locus import build_locus
from photodist.simulate import simulate_patch, write_simulation

TARGET_STARS_PER_MINUTE = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l", type=float, default=90.0, help="Galactic longitude (deg)")
    parser.add_argument("--b", type=float, default=30.0, help="Galactic latitude (deg)")
    parser.add_argument("--radius", type=float, default=3.0, help="cone radius (deg)")
    parser.add_argument("--r-max", type=float, default=27.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs (best is reported)")
    parser.add_argument("--write", type=Path, default=None, help="also time writing Parquet")
    args = parser.parse_args()

    locus = build_locus()
    best = float("inf")
    n_stars = 0
    frame = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        frame = simulate_patch(
            cone=(args.l, args.b, args.radius), r_max=args.r_max, seed=args.seed, locus=locus
        )
        best = min(best, time.perf_counter() - start)
        n_stars = len(frame)
    rate = n_stars / best * 60.0
    print(f"cone l={args.l} b={args.b} radius={args.radius} deg, r < {args.r_max}")
    print(f"stars: {n_stars:,}  best time: {best:.2f} s  ->  {rate / 1e6:.2f} million stars/min")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.write or Path(tmp) / "bench.parquet"
        start = time.perf_counter()
        write_simulation(frame, path)
        print(
            f"write Parquet: {time.perf_counter() - start:.2f} s "
            f"({path.stat().st_size / 1e6:.0f} MB)"
        )
    status = "OK" if rate >= TARGET_STARS_PER_MINUTE else "BELOW TARGET"
    print(f"target >= {TARGET_STARS_PER_MINUTE / 1e6:.0f} million stars/min: {status}")


if __name__ == "__main__":
    main()
