"""Two processes at once on the machine's cores: each runs DMF 2x2 steps and then many small
svdvals calls, alone and then beside the other, and reports the share of its rate alone it
keeps (target: at least 40%). The same as `implicitreg bench --contention`.

    python benchmarks/bench_contention.py [--seconds S] [--json F]
"""

from __future__ import annotations

import argparse

from implicitreg.bench import contention_report

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="wall time of each phase")
    ap.add_argument("--json", metavar="F", help="write the results to this JSON file")
    args = ap.parse_args()
    contention_report(args.seconds, args.json, "bench_contention.py")
