"""The ``rhn-np`` command line.

``rhn-np info`` prints the version and which array backends and devices are usable.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _info(args) -> int:
    from . import backend

    facts = backend.describe()
    print(f"rhn_np {__version__}")
    print(f"python {sys.version.split()[0]}, numpy {facts['numpy']}")
    print(f"backends usable here: {', '.join(facts['backends'])}")
    if "cupy" in facts:
        print(f"cupy {facts['cupy']}, CUDA runtime {facts['cuda_runtime']}, driver {facts['cuda_driver']}")
        print(f"gpu: {facts['gpu']} ({facts['gpu_count']} visible)")
    else:
        print(f"cupy: not usable ({facts.get('cupy_unavailable')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rhn-np", description="Recurrent Highway Networks in NumPy/CuPy.")
    parser.add_argument("--version", action="version", version=f"rhn_np {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="print the version and the usable backends and devices")
    p_info.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
