"""The `mqbench` entry point: the parser built from each command group, and error handling.

Every MqbenchError becomes one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from mqbench.cli import args as A
from mqbench.cli import board, proxy, search, task, truth
from mqbench.errors import MqbenchError
from mqbench.provenance import PACKAGE_VERSION

GROUPS = (task, truth, proxy, board, search)  # `mqbench --help` lists commands in this order
VALUED = ("--shard", "--cal-seed", "--bootstrap", "--timeout", "--mem-mb", "--merge", "--jobs",
          "--generations", "--population", "--seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqbench",
        description="Benchmark training-free mixed-precision quantization proxies against "
                    "ground-truth tables of quantized models.",
        epilog="example: mqbench eval --proxy proxies/tap_best.py\n\n" + A.ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mqbench {PACKAGE_VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--shard -1/2` -> `--shard=-1/2`, so a bad value gets its own message, not argparse's
    "expected one argument" (argparse reads a leading '-' as the next option)."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in VALUED:
            nxt = next(it, None)
            out.append(a if nxt is None else f"{a}={nxt}")
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        A.apply_environment(args)
        code = args.func(args)
    except BrokenPipeError:  # `mqbench ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except MqbenchError as exc:
        print(f"mqbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mqbench: interrupted; `mqbench build` resumes where it stopped", file=sys.stderr)
        return 130
    return code or 0  # a command may return 1: checks ran and failed


if __name__ == "__main__":
    sys.exit(main())
