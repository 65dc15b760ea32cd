"""`mqbench proxies`, `eval`, `submit-check`: listing, scoring and checking proxies."""

from __future__ import annotations

import json
import sys

from mqbench.board.store import save_record
from mqbench.board.submit import DEFAULT_TASKS, SubmitOptions, check_submission
from mqbench.cli import args as A
from mqbench.errors import MqbenchError
from mqbench.proxy.context import HESSIAN_BN
from mqbench.proxy.contract import get_proxy, list_proxies
from mqbench.scoring.fleet import evaluate_many
from mqbench.scoring.harness import BATCHES, EvalOptions, evaluate_proxy
from mqbench.scoring.metrics import format_result


def cmd_proxies(args) -> None:
    for name, p in list_proxies().items():
        print(f"{name:16s} v{p.version}  {p.kind:9s}  {p.paper}")


def print_saved(saved) -> None:
    if saved.db_note:
        print(f"  leaderboard database {saved.db_note} (rebuilt from the record files)")
    if saved.status == "unchanged":
        print(f"  unchanged: {saved.path} already holds a run of this proxy, task and package "
              f"version; kept it (--replace overwrites)")
    elif saved.status == "replaced":
        why = ", ".join(saved.changed) or "--replace"
        print(f"  replaced {saved.path} ({why} changed)")
    else:
        print(f"  recorded in {saved.path} (new)")


def _sequential(proxies, tasks, opts, keep_going: bool):
    for task in tasks:
        for p in proxies:
            try:
                yield evaluate_proxy(p, task, opts)
            except MqbenchError as exc:
                if not keep_going:
                    raise
                yield exc


def cmd_eval(args) -> int:
    proxies = ([get_proxy(args.proxy)] if args.proxy else
               [p for _, p in sorted(list_proxies().items())])
    opts = EvalOptions(bootstrap=args.bootstrap, timeout=args.timeout, mem_mb=args.mem_mb,
                       progress=not args.quiet, downstream=not args.no_downstream,
                       batches=args.batches, hessian_bn=args.hessian_bn)
    tasks = A.tasks(args)
    if args.backend != "local" or args.jobs > 1:  # tasks side by side on a backend's workers
        records = evaluate_many(proxies, tasks, opts, A.backend_options(args, args.jobs))
    else:
        records = _sequential(proxies, tasks, opts, keep_going=len(proxies) > 1)
    failed = []
    for rec in records:
        if isinstance(rec, MqbenchError):
            if len(proxies) == 1:
                raise rec
            # --all goes on past a proxy that cannot run on a task (a CNN-only proxy on a
            # language model) and names it at the end
            failed.append(str(rec))
            print(f"  not recorded: {rec}", file=sys.stderr, flush=True)
            continue
        saved = None if args.no_record else save_record(rec, force=args.replace)
        if args.json:  # machine-readable: the result record, one JSON document per line
            print(json.dumps(rec.to_dict(), sort_keys=True), flush=True)
            continue
        print(format_result(rec), flush=True)
        if saved:
            print_saved(saved)
    if failed:
        print(f"{len(failed)} proxy × task pair(s) could not be scored (above); the others "
              f"were", file=sys.stderr)
    return 0


def print_check(c) -> None:
    """One verdict line, then what the proxy printed during the check, every line marked."""
    print(f"  {'PASS' if c.ok else 'FAIL'}  {c.name:11s} {c.detail}", flush=True)
    if c.output:
        print(c.output, flush=True)


def cmd_submit_check(args) -> int:
    A.tasks(args, DEFAULT_TASKS)  # a misspelt task fails before the summary starts
    opts = SubmitOptions(tasks=tuple(A.task_names(args, DEFAULT_TASKS)), timeout=args.timeout,
                         mem_mb=args.mem_mb, bootstrap=args.bootstrap,
                         record=not args.no_record, progress=not args.quiet)
    print(f"submit-check {args.proxy} on {', '.join(opts.tasks)}")
    ok, _ = check_submission(args.proxy, opts, report=print_check)
    if ok:
        print("passed: add the proxy file to your pull request (CI re-measures it)" +
              ("; the records above are yours to inspect, commit them only if asked"
               if opts.record else "; nothing was recorded (--no-record)"))
        return 0
    print("failed: fix the FAIL above and run again; nothing was recorded")
    return 1


def register(sub) -> None:
    p = sub.add_parser("proxies", help="list the registered proxies",
                       description="List the proxies found in proxies/ and $MQBENCH_PROXIES.")
    p.set_defaults(func=cmd_proxies)

    p = sub.add_parser("eval", help="score a proxy against tasks' ground-truth tables",
                       description="Load a proxy (file path or registered name), run it "
                       "isolated on each task's cached statistics, and report Spearman, "
                       "Kendall, Spearman@top-k, layer-level Spearman and the accuracy of its "
                       "ILP bit allocations. Builds the task's table on first use. Results are "
                       "recorded under leaderboard/records/ unless --no-record.",
                       epilog="examples: mqbench eval --proxy proxies/tap_best.py "
                       "--task fmnist-resnet8,fmnist-vit; mqbench eval --all --task "
                       "fmnist-resnet8 --replace")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--proxy", help="proxy file (proxies/NAME.py) or name")
    which.add_argument("--all", action="store_true",
                       help="every registered proxy, one after another (e.g. to re-record a "
                       "task after its table changed: --all --task T --replace)")
    A.add_tasks(p)
    A.add_bootstrap(p)
    A.add_limits(p)
    p.add_argument("--no-record", action="store_true", help="do not write to the leaderboard")
    p.add_argument("--output", metavar="DIR",
                   help="leaderboard folder to record into (default leaderboard/, or "
                   "$MQBENCH_LEADERBOARD)")
    p.add_argument("--json", action="store_true",
                   help="print the result record as JSON (one line per task) instead of text")
    p.add_argument("--no-downstream", action="store_true",
                   help="skip the ILP allocations (correlations only; faster)")
    p.add_argument("--batches", type=A.positive_int, default=BATCHES, metavar="N",
                   help=f"calibration batches the proxy runs on, for its variance (default "
                   f"{BATCHES}; 1 = the task seed's batch only)")
    p.add_argument("--hessian-bn", choices=HESSIAN_BN, default="folded",
                   help="where Hessian statistics are taken: on the BatchNorm-folded weights "
                   "that are quantized (default) or unfolded, as HAWQ's reference code; a "
                   "non-default choice is recorded as PROXY@hessian-bn-unfolded")
    p.add_argument("--replace", action="store_true",
                   help="overwrite the stored record even if proxy, task and package versions "
                   "are unchanged (by default such a re-run keeps the stored record)")
    p.add_argument("--jobs", type=A.positive_int, default=1, metavar="N",
                   help="tasks evaluated side by side (local worker processes; with --backend "
                   "ray: the CPUs of a private local instance)")
    A.add_backend(p, build=False)
    A.add_device(p)
    A.add_data_dir(p)
    A.add_quiet(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("submit-check", help="validate a new proxy file before a pull request",
                       description="Check a proxy file as CI does: contract (one @proxy, "
                       "name not taken by another file), conformance suite, isolated run "
                       "(no network, no writes outside a scratch directory, time and memory "
                       "limits) and scoring on each task; writes its record files only if "
                       "everything passed. Exit code 0 = passed, 1 = a check failed, 2 = bad "
                       "input.",
                       epilog="example: mqbench submit-check proxies/my_proxy.py "
                       "--task digits-resnet8 --no-record")
    p.add_argument("proxy", help="the proxy file, e.g. proxies/my_proxy.py")
    A.add_tasks(p, default=", ".join(DEFAULT_TASKS))
    A.add_limits(p)
    A.add_bootstrap(p)
    p.add_argument("--no-record", action="store_true", help="check only; write no records")
    A.add_data_dir(p)
    A.add_quiet(p)
    p.set_defaults(func=cmd_submit_check)
