#!/usr/bin/env python3
"""Download a data set into DATA_ROOT (the only command that touches the network)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("data", help="bmnist, fashion, cifar10 or celeba")
    p.add_argument("--data-root", default=None, help="default: $DATA_ROOT or ./data")
    args = p.parse_args(argv)
    from memo import data
    try:
        data.download(args.data, root=args.data_root)
        d = data.load(args.data, "train", root=args.data_root)
    except (ValueError, data.DataMissingError, OSError, RuntimeError) as e:
        print(f"get_data.py: error: {e}", file=sys.stderr)
        return 1
    print(f"{d.name}: {d.n} training images ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
