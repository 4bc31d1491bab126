"""The ``scratchvae`` command."""
from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scratchvae",
        description="A Variational Autoencoder from scratch: NumPy, hand-written backprop, "
                    "every gradient checked against finite differences.")
    parser.add_argument("--version", action="version", version=f"scratchvae {__version__}")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
