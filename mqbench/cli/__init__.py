"""The `mqbench` command line: argument parsing and printing over the public API."""

from mqbench.cli.main import main

__all__ = ["main"]
