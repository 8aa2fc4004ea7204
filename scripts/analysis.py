"""Draw the figures of the paper from summary files (the Makefile runs one figure per call).

    python scripts/analysis.py FIGURE SUMMARY [SUMMARY ...] [--out DIR]
    python scripts/analysis.py all SUMMARY [--out DIR]
    python scripts/analysis.py sweep analysis/fashion_sizes_sweep.npz [--out DIR]
    python scripts/analysis.py families analysis/families.json [--out DIR]
    python scripts/analysis.py list

Each figure is written as DIR/FIGURE.{pgf,tex,pdf,png,json}. Several summaries draw one
figure comparing them (losses, quantiles, distribution only). The nearest-neighbour figure
reads <summary>_nn.npz next to the summary, the measures figure <summary>_measures.npz; the image figures load the training images.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cli
from memo.files import families as families_file
from memo.files import measures as measures_file
from memo.files import neighbours as neighbours_file
from memo.files import summary
from memo.files import sweep as sweep_file
from memo import figures  # light: no matplotlib until a figure is drawn
from memo.errors import FileFormatError


STANDALONE_OUT = {"sweep": "size_sweep", "families": "families"}   # output/<folder>


def default_out(summaries: list[Path]) -> Path:
    """output/<experiment>, or output/<shared prefix> when comparing (bmnist_lr3, _lr4: bmnist)."""
    stems = [p.stem for p in summaries]
    if len(stems) == 1:
        return Path("output") / stems[0]
    prefix = os.path.commonprefix(stems).rstrip("_")
    prefix = prefix.rsplit("_", 1)[0] if "_" in prefix else prefix
    return Path("output") / (prefix or "+".join(stems))


def main(argv=None) -> int:
    p = cli.parser(__file__, __doc__.split("\n\n")[0])
    p.add_argument("figure", choices=figures.FIGURES + ("all", "list"),
                   help="figure to draw; 'all': every figure of one experiment")
    p.add_argument("summaries", nargs="*", type=Path,
                   help="analysis/<exp>.npz file(s); for 'sweep' the sweep file, for "
                   "'families' the family comparison")
    p.add_argument("--out", type=Path, help="output folder (default: output/<experiment>)")
    p.add_argument("--nn", type=Path, help="nearest-neighbour file (default: <summary>_nn.npz)")
    p.add_argument("--measures", type=Path,
                   help="measures file (default: <summary>_measures.npz)")
    p.add_argument("--seed", type=int, default=figures.DEFAULT_SEED,
                   help="seed of the example images in the logprob figure (default: %(default)s)")
    p.add_argument("--no-latex", action="store_true",
                   help="draw PDFs with matplotlib even when LaTeX is installed")
    args = p.parse_args(argv)
    if args.figure == "list":
        print("\n".join(figures.FIGURES))
        return 0
    if not args.summaries:
        p.error("give at least one summary file")
    names = (args.figure,) if args.figure != "all" else figures.PER_EXPERIMENT
    if len(args.summaries) > 1 and any(n not in figures.SERIES + figures.GROUP_ONLY for n in names):
        p.error("several summaries are compared only in "
                f"{', '.join(figures.SERIES + figures.GROUP_ONLY)}")
    return cli.run(__file__, draw, args, names)


def draw(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Every figure of `names` from the inputs named by args; a missing input file that a
    figure needs is an error, except for `all`, which leaves that figure out."""
    # numpy and matplotlib: after the command line is read
    from memo.figures import common
    engine = None if args.no_latex else common.latex_engine()
    inputs = {"nn": None, "images": None, "measures_set": None, "sweep": None, "families": None}
    standalone = args.figure in figures.STANDALONE  # drawn from its own file, not summaries
    out = cli.output(args.out or (Path("output") / STANDALONE_OUT[args.figure] if standalone
                                  else default_out(args.summaries)))
    if standalone:
        summaries = []
        if args.figure == "sweep":
            inputs["sweep"] = sweep_file.load(args.summaries[0])
        else:
            inputs["families"] = families_file.load(args.summaries[0])
    else:
        summaries = [summary.load(s) for s in args.summaries]
    if any(n in figures.NEEDS_NN + figures.USES_NN for n in names):
        nn_path = args.nn or neighbours_file.path_for(args.summaries[0])
        inputs["nn"] = neighbours_file.load_optional(nn_path, summaries[0].n)
        if inputs["nn"] is None and args.figure in figures.NEEDS_NN:
            raise FileFormatError(f"no nearest-neighbour file {nn_path}")
    if any(n in figures.NEEDS_IMAGES for n in names):
        inputs["images"] = common.load_images(summaries[0])
    if any(n in figures.NEEDS_MEASURES for n in names):
        path = args.measures or measures_file.path_for(args.summaries[0])
        inputs["measures_set"] = measures_file.load_optional(path)
        if inputs["measures_set"] is None and args.figure != "all":
            raise FileFormatError(f"no measures file {path}")
    for name in names:
        if (name in figures.NEEDS_NN and inputs["nn"] is None) or (
                name in figures.NEEDS_MEASURES and inputs["measures_set"] is None):
            continue   # `all`: what has no input of its own is left out
        for path in figures.build(name, summaries, out, seed=args.seed, engine=engine, **inputs):
            if path.suffix == ".pdf":
                print(path)


if __name__ == "__main__":
    sys.exit(main())
