"""`mqbench build`, `show`, `measure`: ground-truth tables and single configurations."""

from __future__ import annotations

import argparse
import math

from mqbench.cli import args as A
from mqbench.quant.space import BitConfig
from mqbench.truth.bench import open_bench
from mqbench.truth.build import (
    build_parallel,
    build_table,
    default_jobs,
    fill_table,
    merge_shards,
)
from mqbench.truth.noise import ceiling_lines
from mqbench.truth.store import Table, export_table, load_table, open_table


def cmd_build(args) -> None:
    for task in A.tasks(args):
        if args.export:
            print(f"exported to {export_table(task)}")
        elif args.merge:
            merge_shards(task, args.merge, progress=not args.quiet)
            summary(load_table(task))
        elif args.shard:
            path = build_table(task, shard=args.shard, force=args.force, progress=not args.quiet)
            print(f"shard {args.shard[0]}/{args.shard[1]} written to {path}; merge all shards "
                  f"with `mqbench build --task {task.name} --merge {args.shard[1]}`")
        elif args.backend == "local" and not args.dry_run:
            build_parallel(task, args.jobs or default_jobs(), force=args.force,
                           progress=not args.quiet)
            summary(load_table(task))
        else:
            fill_table(task, A.backend_options(args, args.jobs or default_jobs()),
                       force=args.force, progress=not args.quiet, dry_run=args.dry_run)
            if not args.dry_run:
                summary(load_table(task))


def summary(table: Table) -> None:
    m = table.meta
    lm = table.task.is_lm
    print(f"table {table.path}")
    print(f"  task {m['task']} v{m['task_version']}  method {m.get('quant_method', 'rtn')}  "
          f"seed {m['seed']}  mqbench "
          f"{m['package_version']}  commit {m['git_commit'][:12]}  rows {m['rows']}")
    print(f"  build time {float(m.get('build_seconds', 0)):.0f} s  checksum "
          f"{m['rows_checksum'][:16]}…")
    fp = table.kind("fp")
    if len(fp):
        ppl = f"  perplexity {math.exp(fp.loss.iloc[0]):.2f}" if lm else ""
        print(f"  full precision: acc {fp.acc.iloc[0]:.4f}  loss {fp.loss.iloc[0]:.4f}{ppl}")
    for r in table.kind("uniform").itertuples():
        ppl = f"  perplexity {math.exp(r.loss):.2f}" if lm else ""
        print(f"  uniform {r.key} acc {r.acc:.4f}  kl {r.kl:.4f}{ppl}")
    cfg = table.configs()
    print(f"  {len(cfg)} configurations: acc {cfg.acc.min():.4f}..{cfg.acc.max():.4f}, "
          f"avg weight bits {cfg.avg_wbits.min():.2f}..{cfg.avg_wbits.max():.2f}")
    if "noise_spearman_acc" in m:
        what = "other eval windows" if lm else "2nd calibration seed"
        print(f"  noise floor ({m['noise_pairs']} configs, {what}): Spearman acc "
              f"{float(m['noise_spearman_acc']):.3f}, KL {float(m['noise_spearman_kl']):.3f}, "
              f"mean |Δacc| {float(m['noise_mean_abs_acc_diff']):.4f}")
    for line in ceiling_lines(m):  # protocol-2 tables: ceilings, broken and tied shares
        print(line)


def cmd_show(args) -> None:
    for task in A.tasks(args):
        summary(open_table(task))


def cmd_measure(args) -> None:
    task = A.one_task(args, "measure")
    bench = open_bench(task, progress=not args.quiet)
    space = bench.space
    if args.config:
        cfg = space.validate(BitConfig.from_key(args.config))
    else:
        cfg = space.from_mapping(A.parse_bits(args.bits or ""))
    m = bench.evaluator(task.seed if args.cal_seed is None else args.cal_seed).evaluate(cfg)
    print(f"{cfg.key}\n  acc {m.acc:.4f}  loss {m.loss:.4f}  kl {m.kl:.5f}  size "
          f"{space.size_bits(cfg) / 8 / 1024:.1f} KiB  BOPs {space.bops(cfg):.4g}")
    if task.is_lm:  # acc above is next-token accuracy
        print(f"  perplexity {math.exp(m.loss):.3f}")
    print("  units: " + ", ".join(space.units))


def register(sub) -> None:
    p = sub.add_parser("build", help="build (or resume) a task's ground-truth table",
                       description="Quantize and evaluate the task's sampled bit "
                       "configurations, uniform configurations, per-layer sensitivity and "
                       "noise-floor repeats; store them with provenance in DuckDB under "
                       "$MQBENCH_CACHE (default ~/.cache/mqbench). Interrupted builds resume "
                       "where they stopped. Evaluation runs on $MQBENCH_DEVICE (cpu by default; "
                       "cuda or auto for a GPU).",
                       epilog="examples:\n  mqbench build --task fmnist-vit --jobs 2\n"
                       "  mqbench build --task fmnist-resnet8 --backend ray --ray-address "
                       "head:6379\n  mqbench build --task fmnist-resnet8 --backend slurm "
                       "--partition gpu --time-min 30 --device cuda --dry-run",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    A.add_tasks(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shard", type=A.shard, metavar="I/N",
                   help="build only every N-th measurement starting at I (for clusters)")
    g.add_argument("--merge", type=A.positive_int, metavar="N",
                   help="merge the N complete shard files into the task's table")
    g.add_argument("--export", action="store_true",
                   help="copy the built table and weights to tasks/artifacts/ (maintainers)")
    p.add_argument("--jobs", type=A.positive_int, default=0, metavar="N",
                   help="worker processes, one thread each (default: one per CPU core); "
                   "small models evaluate faster side by side than multi-threaded")
    p.add_argument("--force", action="store_true", help="discard an existing table and rebuild")
    A.add_backend(p)
    A.add_device(p)
    A.add_quiet(p)
    A.add_data_dir(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("show", help="summarise a task's table and its provenance",
                       description="Verify (checksum) and summarise a task's table; installs "
                       "the shipped table on first use.")
    A.add_tasks(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("measure", help="quantize and evaluate one bit configuration",
                       description="Evaluate one configuration with the task's quantizer. "
                       "Units not named in --bits get the highest weight bit choice.",
                       epilog="example: mqbench measure --bits conv1=2,fc=4")
    A.add_tasks(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="canonical key, e.g. 'w:4.2.3|a:8.8.8'")
    g.add_argument("--bits", help="per-unit weight bits, e.g. 'conv1=8,layer1.0.conv1=2'")
    p.add_argument("--cal-seed", type=A.nonnegative_int,
                   help="calibration seed (default: the task seed)")
    A.add_device(p)
    A.add_data_dir(p)
    A.add_quiet(p)
    p.set_defaults(func=cmd_measure)


