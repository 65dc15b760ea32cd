"""The `mqbench` command line: thin subcommands over the public API.

Every MqbenchError becomes one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from mqbench.errors import MqbenchError


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def cmd_tasks(args) -> None:
    from mqbench.tasks import DEFAULT_TASK, list_tasks, load_task

    for name in list_tasks():
        task = load_task(name)
        mark = " (default)" if name == DEFAULT_TASK else ""
        print(f"{name:24s} v{task.version}  {task.description}{mark}")


def cmd_build(args) -> None:
    from mqbench.table import build_table, load_table, merge_shards
    from mqbench.tasks import load_task

    task = load_task(args.task)
    if args.merge:
        path = merge_shards(task, args.merge, progress=not args.quiet)
    else:
        path = build_table(task, shard=args.shard, force=args.force, progress=not args.quiet)
        if args.shard:
            print(f"shard {args.shard[0]}/{args.shard[1]} written to {path}; merge all shards "
                  f"with `mqbench build {task.name} --merge {args.shard[1]}`")
            return
    _summary(load_table(task))


def _summary(table) -> None:
    m, rows = table.meta, table.rows
    print(f"table {table.path}")
    print(f"  task {m['task']} v{m['task_version']}  seed {m['seed']}  mqbench "
          f"{m['package_version']}  commit {m['git_commit'][:12]}  rows {m['rows']}")
    print(f"  build time {float(m.get('build_seconds', 0)):.0f} s  checksum "
          f"{m['rows_checksum'][:16]}…")
    fp = table.kind("fp")
    if len(fp):
        print(f"  full precision: acc {fp.acc.iloc[0]:.4f}  loss {fp.loss.iloc[0]:.4f}")
    for r in table.kind("uniform").itertuples():
        print(f"  uniform {r.key:40.40s} acc {r.acc:.4f}  kl {r.kl:.4f}")
    cfg = table.configs()
    print(f"  {len(cfg)} configurations: acc {cfg.acc.min():.4f}..{cfg.acc.max():.4f}, "
          f"avg weight bits {cfg.avg_wbits.min():.2f}..{cfg.avg_wbits.max():.2f}")
    if "noise_spearman_acc" in m:
        print(f"  noise floor ({m['noise_pairs']} configs, 2nd calibration seed): Spearman acc "
              f"{float(m['noise_spearman_acc']):.3f}, KL {float(m['noise_spearman_kl']):.3f}, "
              f"mean |Δacc| {float(m['noise_mean_abs_acc_diff']):.4f}")


def cmd_show(args) -> None:
    from mqbench.table import load_table
    from mqbench.tasks import load_task

    _summary(load_table(load_task(args.task)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mqbench",
        description="Benchmark training-free mixed-precision quantization proxies against "
                    "ground-truth tables of quantized models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tasks", help="list the registered tasks",
                       description="List the task files found in tasks/ and $MQBENCH_TASKS.")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("build", help="build (or resume) a task's ground-truth table",
                       description="Quantize and evaluate the task's sampled bit "
                       "configurations, uniform configurations, per-layer sensitivity and "
                       "noise-floor repeats; store them with provenance in DuckDB under "
                       "$MQBENCH_CACHE (default ~/.cache/mqbench). Interrupted builds resume "
                       "where they stopped.")
    p.add_argument("task", nargs="?", default=None,
                   help="task name or path to a task .toml (default: the bundled task)")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="build only every N-th measurement starting at I (for clusters)")
    p.add_argument("--merge", type=int, metavar="N",
                   help="merge the N complete shard files into the task's table")
    p.add_argument("--force", action="store_true", help="discard an existing table and rebuild")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("show", help="summarise a task's table and its provenance",
                       description="Verify and summarise a built table.")
    p.add_argument("task", nargs="?", default=None, help="task name (default: bundled task)")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None):
        os.environ["MQBENCH_DATA"] = args.data_dir
    try:
        args.func(args)
    except MqbenchError as exc:
        print(f"mqbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mqbench: interrupted; `mqbench build` resumes where it stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
