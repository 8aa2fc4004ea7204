#!/usr/bin/env python3
"""Download a data set into DATA_ROOT (the only command that touches the network)."""
from __future__ import annotations

import sys

import cli
from memo.config import naming


def main(argv=None) -> int:
    p = cli.parser(__file__, __doc__)
    p.add_argument("data", help="bmnist, fashion, cifar10 or celeba")
    cli.add_data_root(p)
    args = p.parse_args(argv)
    return cli.run(__file__, fetch, args, failures=(RuntimeError,))  # a failed download


def fetch(args) -> None:
    from memo import data
    with cli.usage():
        if naming.parse_spec(args.data)[0] == "npz":
            raise cli.UsageError(f"{args.data!r} is a local file; there is nothing to download")
    data.download(args.data, root=args.data_root)
    d = data.load(args.data, "train", root=args.data_root)
    print(f"{d.name}: {d.n} training images ready")


if __name__ == "__main__":
    sys.exit(main())
