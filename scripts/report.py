"""Put every figure built and a table of key numbers into one PDF (output/report.pdf).

    python scripts/report.py [--summaries analysis/*.npz] [--figures output/*/*.json]
                             [--out output/report.pdf]
"""
from __future__ import annotations

import sys
from pathlib import Path

import cli


def main(argv=None) -> int:
    p = cli.parser(__file__, __doc__.split("\n\n")[0])
    p.add_argument("--summaries", nargs="*", type=Path,
                   help="summary files (default: analysis/*.npz without the *_nn, *_measures and "
                   "*_sweep files)")
    p.add_argument("--figures", nargs="*", type=Path,
                   help="the figures' .json files (default: <out folder>/*/*.json)")
    p.add_argument("--out", type=Path, default=Path("output/report.pdf"), help="the PDF to write (default: %(default)s)")
    p.add_argument("--no-latex", action="store_true", help="put the pages together with matplotlib")
    args = p.parse_args(argv)

    from memo.figures import report
    summaries = args.summaries
    if summaries is None:
        summaries = sorted(p for p in Path("analysis").glob("*.npz")
                           if not p.stem.endswith(("_nn", "_measures", "_sweep")))
    jsons = args.figures
    if jsons is None:
        jsons = sorted(args.out.parent.glob("*/*.json"))
    # RuntimeError: LaTeX failed (its log's last lines are in the message)
    rc = cli.run(__file__, lambda: report.build(summaries, jsons, cli.output(args.out),
                                                None if args.no_latex else "auto"),
                 failures=(RuntimeError,))
    if rc == 0:
        print(args.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
