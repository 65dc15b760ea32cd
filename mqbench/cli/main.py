"""The `mqbench` command line: thin subcommands over the public API.

Every MqbenchError becomes one line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from mqbench.board import store as L
from mqbench.board.publish import regenerate
from mqbench.board.report import load_records, record_tasks, render
from mqbench.board.store import save_record
from mqbench.board.submit import DEFAULT_TASKS, SubmitOptions, check_submission
from mqbench.errors import MqbenchError, did_you_mean
from mqbench.paths import REPO_ROOT
from mqbench.proxy.contract import get_proxy, list_proxies
from mqbench.quant.space import BitConfig
from mqbench.scoring.harness import EvalOptions, evaluate_proxy
from mqbench.search.automixq.compare import compare, markdown, write
from mqbench.search.automixq.search import Search
from mqbench.search.evolution import llm_loop as LL
from mqbench.search.evolution.fitness import context
from mqbench.search.evolution.generator_dpo import DPOSettings, GeneratorDPO, require_trl
from mqbench.search.evolution.generators import OpenAIGenerator
from mqbench.search.evolution.hf_generator import HFGenerator
from mqbench.search.evolution.loop import Settings, discover
from mqbench.task.spec import DEFAULT_TASK, check_budgets, list_tasks, load_task
from mqbench.truth.bench import open_bench
from mqbench.truth.build import build_parallel, build_table, default_jobs, merge_shards
from mqbench.truth.store import export_table, import_shipped, load_table, table_path


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def cmd_tasks(args) -> None:

    for name in list_tasks():
        task = load_task(name)
        mark = " (default)" if name == DEFAULT_TASK else ""
        print(f"{name:24s} v{task.version}  {task.description}{mark}")


def cmd_build(args) -> None:

    task = load_task(args.task)
    if args.export:

        print(f"exported to {export_table(task)}")
        return
    if args.merge:
        path = merge_shards(task, args.merge, progress=not args.quiet)
    else:
        if args.shard:
            path = build_table(task, shard=args.shard, force=args.force,
                               progress=not args.quiet)
            print(f"shard {args.shard[0]}/{args.shard[1]} written to {path}; merge all shards "
                  f"with `mqbench build {task.name} --merge {args.shard[1]}`")
            return
        jobs = args.jobs or default_jobs()
        if jobs < 1:
            raise MqbenchError(f"--jobs {args.jobs}: need at least 1 worker process")
        build_parallel(task, jobs, force=args.force, progress=not args.quiet)
    _summary(load_table(task))


def _summary(table) -> None:
    m = table.meta
    print(f"table {table.path}")
    print(f"  task {m['task']} v{m['task_version']}  seed {m['seed']}  mqbench "
          f"{m['package_version']}  commit {m['git_commit'][:12]}  rows {m['rows']}")
    print(f"  build time {float(m.get('build_seconds', 0)):.0f} s  checksum "
          f"{m['rows_checksum'][:16]}…")
    fp = table.kind("fp")
    if len(fp):
        ppl = (f"  perplexity {math.exp(fp.loss.iloc[0]):.2f}" if table.task.is_lm else "")
        print(f"  full precision: acc {fp.acc.iloc[0]:.4f}  loss {fp.loss.iloc[0]:.4f}{ppl}")
    for r in table.kind("uniform").itertuples():
        ppl = f"  perplexity {math.exp(r.loss):.2f}" if table.task.is_lm else ""
        print(f"  uniform {r.key:40.40s} acc {r.acc:.4f}  kl {r.kl:.4f}{ppl}")
    cfg = table.configs()
    print(f"  {len(cfg)} configurations: acc {cfg.acc.min():.4f}..{cfg.acc.max():.4f}, "
          f"avg weight bits {cfg.avg_wbits.min():.2f}..{cfg.avg_wbits.max():.2f}")
    if "noise_spearman_acc" in m:
        what = "other eval windows" if table.task.is_lm else "2nd calibration seed"
        print(f"  noise floor ({m['noise_pairs']} configs, {what}): Spearman acc "
              f"{float(m['noise_spearman_acc']):.3f}, KL {float(m['noise_spearman_kl']):.3f}, "
              f"mean |Δacc| {float(m['noise_mean_abs_acc_diff']):.4f}")


def _parse_bits(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, sep, bits = part.partition("=")
        if not sep or not bits.strip().isdigit():
            raise MqbenchError(f"--bits: expected NAME=BITS[,NAME=BITS...], got {part!r}")
        out[name.strip()] = int(bits)
    return out


def cmd_measure(args) -> None:

    task = load_task(args.task)
    bench = open_bench(task, progress=not args.quiet)
    space = bench.space
    if args.config:
        cfg = space.validate(BitConfig.from_key(args.config))
    else:
        cfg = space.from_mapping(_parse_bits(args.bits or ""))
    m = bench.evaluator(args.cal_seed if args.cal_seed is not None else task.seed).evaluate(cfg)
    print(f"{cfg.key}\n  acc {m.acc:.4f}  loss {m.loss:.4f}  kl {m.kl:.5f}  size "
          f"{space.size_bits(cfg) / 8 / 1024:.1f} KiB  BOPs {space.bops(cfg):.4g}")
    if task.is_lm:  # acc above is next-token accuracy
        print(f"  perplexity {math.exp(m.loss):.3f}")
    print("  units: " + ", ".join(space.units))


def cmd_show(args) -> None:

    task = load_task(args.task)
    if not table_path(task).exists():
        import_shipped(task)
    _summary(load_table(task))


def _fmt(v, ci=None) -> str:
    if v is None:
        return "—"
    return f"{v:+.3f}" if ci is None or ci[0] is None else f"{v:+.3f} [{ci[0]:+.2f},{ci[1]:+.2f}]"


def print_result(rec: dict) -> None:
    m = rec["metrics"]
    print(f"proxy {rec['proxy']} v{rec['proxy_version']} on {rec['task']} "
          f"v{rec['task_version']}  ({rec['n_configs']} configurations, 95% bootstrap CIs)")
    rows = [("Spearman", "spearman"), ("Kendall tau-b", "kendall"),
            ("Spearman@top20%", "spearman_top20"), ("Spearman@top50%", "spearman_top50"),
            ("Spearman@top100%", "spearman_top100"), ("Precision@top20%", "precision_top20"),
            ("Spearman vs -KL", "kl_spearman"), ("layer Spearman (rho_sens)", "layer_spearman"),
            ("fitness (TAP phi)", "fitness")]
    for label, key in rows:
        print(f"  {label:28s} {_fmt(m.get(key), (m.get(key + '_lo'), m.get(key + '_hi')))}")
    for d in rec["downstream"]:
        print(f"  ILP {d['metric']:4s} @ {d['budget_avg_bits']:.2f} avg bits: acc {d['acc']:.4f} (best in table "
              f"{d['best_table_acc']:.4f}, gap {d['gap_to_best']:+.4f})  {d['config']}")
    t = rec["timing"]
    print(f"  time: proxy {t['proxy_seconds']:.3f} s, scoring {1000 * t['score_seconds']:.2f} ms"
          f" for all configurations")


def cmd_eval(args) -> None:

    p = get_proxy(args.proxy)
    tasks = [load_task(t) for t in (args.task or [None])]
    opts = EvalOptions(bootstrap=args.bootstrap, timeout=args.timeout, mem_mb=args.mem_mb,
                       progress=not args.quiet)
    for task in tasks:
        rec = evaluate_proxy(p, task, opts)
        print_result(rec)
        if not args.no_record:
            print_saved(save_record(rec, force=args.replace))


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


def cmd_submit_check(args) -> int:

    opts = SubmitOptions(tasks=tuple(args.task or DEFAULT_TASKS), timeout=args.timeout,
                         mem_mb=args.mem_mb, bootstrap=args.bootstrap,
                         record=not args.no_record, progress=not args.quiet)

    for task in opts.tasks:
        load_task(task)  # a misspelt task fails before the summary starts
    print(f"submit-check {args.proxy} on {', '.join(opts.tasks)}")
    ok, _ = check_submission(args.proxy, opts, report=lambda c: print(
        f"  {'PASS' if c.ok else 'FAIL'}  {c.name:11s} {c.detail}", flush=True))
    if ok:
        print("passed: add the proxy file and the record files above to your pull request")
        return 0
    print("failed: fix the FAIL above and run again; nothing was recorded")
    return 1


def cmd_proxies(args) -> None:

    for name, p in list_proxies().items():
        print(f"{name:16s} v{p.version}  {p.kind:9s}  {p.paper}")


def cmd_leaderboard(args) -> None:

    if args.action == "rebuild":
        print(f"rebuilt {L.rebuild_db()} from {L.leaderboard_dir() / 'records'}")
    elif args.action == "regenerate":

        paths = regenerate(readme=None if args.no_readme else REPO_ROOT / "README.md")
        print(f"regenerated {len(paths)} files: tables in {L.leaderboard_dir() / 'tables'}, "
              f"page and plots in {L.leaderboard_dir() / 'site'}"
              + ("" if args.no_readme else ", README.md leaderboard section"))
    else:

        known = record_tasks()
        for task in args.task or [DEFAULT_TASK]:
            if task not in known:
                raise MqbenchError(f"no leaderboard records for task {task!r}"
                                   f"{did_you_mean(task, known)}; run `mqbench eval --task "
                                   f"{task}` first")
            for kind in args.kind or ["correlation", "downstream"]:
                print(render(task, kind, args.format))


def cmd_automixq(args) -> None:
    from pathlib import Path

    task = load_task(args.task or "pydocs-llama")
    if args.budgets:
        import dataclasses

        check_budgets(task, args.budgets, "--budgets")
        task = dataclasses.replace(task, automixq=dataclasses.replace(
            task.automixq, budgets=tuple(args.budgets)))
    if not task.is_lm:
        raise MqbenchError(f"AutoMixQ searches language-model tasks; {task.name} is not one "
                           f"(try --task pydocs-llama)")
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out / f"{task.key}-automixq.ckpt.json"
    search = Search(open_bench(task, progress=not args.quiet), progress=not args.quiet)
    state = search.run(ckpt, resume=args.resume)
    records = load_records(task.name)
    result = compare(search, state, records, random_seeds=args.random_seeds)
    js, md = write(result, out)
    print(markdown(result))
    print(f"written {md} and {js}; checkpoint {ckpt}")


def cmd_discover(args) -> None:
    from pathlib import Path

    if args.generations < 0 or args.population < 2:
        raise MqbenchError("need --generations >= 0 and --population >= 2")
    task = load_task(args.task or DEFAULT_TASK)
    if args.generator in ("openai", "hf"):
        return _discover_llm(args, task)
    holdout = [load_task(h) for h in args.holdout or []]
    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".checkpoint.json")
    settings = Settings(task.name, args.generations, args.population, args.seed)
    rep = discover(task, settings, out, holdout, ckpt, args.resume, not args.quiet)
    st = rep["state"]
    print(f"wrote {rep['path']} (checkpoint {ckpt}); {st.evaluated} candidates, "
          f"{st.invalid} invalid, {st.duplicates} duplicates")
    for label, rows in [(f"training task {task.name}", rep["train"])] + [
            (f"held-out task {k} (no tuning on it)", v) for k, v in rep["holdout"].items()]:
        print(f"\n{label}: fitness phi (table-lookup Acc), best first")
        for name, f in rows:
            mark = "  <- discovered" if name == rep["name"] else ""
            print(f"  {name:16s} phi {f.phi:7.4f}  rho_sens {f.rho_sens:6.3f}  "
                  f"Acc {f.acc:.4f}  Spearman {f.spearman:6.3f}{mark}")


def _discover_llm(args, task) -> None:
    from pathlib import Path

    out = Path(args.out)
    workdir = Path(args.checkpoint) if args.checkpoint else out.with_suffix(".run")
    settings = LL.LLMSettings(task.name, args.generations, args.population, seed=args.seed,
                              margin=args.dpo_margin)
    hook = None
    if args.generator == "hf":
        gen, hook = _hf_generator(args, workdir, settings)
    else:
        gen = OpenAIGenerator(model=args.model or "", base_url=args.base_url or "",
                              api_key=args.api_key or "", cache_dir=workdir / "cache")
    ctx = context(task, not args.quiet)
    state = LL.run_llm(ctx, gen, settings, workdir, args.resume, not args.quiet, hook)
    best = state.members[0]
    if best["phi"] == float("-inf"):
        raise MqbenchError(f"no valid proxy after {state.evaluated} candidates "
                           f"({state.invalid} invalid); see {workdir / 'checkpoint.json'}")
    code = best["code"]
    model = gen.model if args.generator == "openai" else args.model
    header = (f'"""Discovered by `mqbench discover` (generator: {args.generator}, model '
              f'{model}).\n\n'
              f"Reasoning: {best['reasoning']}\n\nTraining task {task.name}: fitness "
              f"{best['phi']:.4f}; generation {best['generation']}; {state.evaluated} "
              f'candidates ({state.invalid} invalid).\n"""\n')
    out.write_text(header + code.replace('name="candidate"', f'name="{out.stem}"'))
    u = gen.usage
    print(f"wrote {out}; {state.evaluated} candidates, {state.invalid} invalid; "
          f"{u.requests} requests ({u.cached} cached, {u.retries} retries), "
          f"{u.prompt_tokens}+{u.completion_tokens} tokens, ${u.cost_usd:.4f}; "
          f"pairs in {workdir / 'pairs.jsonl'}; template probabilities "
          f"{state.history[-1]['probs']}")
    for d in state.generator.get("dpo", []):
        print(f"generator DPO after generation {d['generation']}: {d['pairs']} pairs" + (
            f", logp margin {d['margin_before']:.3f} -> {d['margin_after']:.3f}, adapter "
            f"{workdir / d['adapter']}" if d["pairs"] else " (no update)"))


def _hf_generator(args, workdir, settings):
    """The local transformers generator and, unless --dpo-every 0, its DPO fine-tuning hook."""

    if not args.model:
        raise MqbenchError("generator 'hf' needs --model: a local directory holding a "
                           "transformers causal LM and its tokenizer")
    if args.dpo_every < 0 or args.max_new_tokens < 1:
        raise MqbenchError("need --dpo-every >= 0 and --max-new-tokens >= 1")
    if args.dpo_every:
        require_trl()  # fail now, not after the first generation
    gen = HFGenerator(args.model, adapter=args.adapter, cache_dir=workdir / "cache",
                      max_new_tokens=args.max_new_tokens)
    hook = GeneratorDPO(gen, workdir, LL.chat, args.dpo_every,
                        DPOSettings(margin=settings.margin, seed=args.seed)) \
        if args.dpo_every else None
    return gen, hook


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
                       "where they stopped. Evaluation runs on $MQBENCH_DEVICE (cpu by default; "
                       "cuda or auto for a GPU).")
    p.add_argument("task", nargs="?", default=None,
                   help="task name or path to a task .toml (default: the bundled task)")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="build only every N-th measurement starting at I (for clusters)")
    p.add_argument("--merge", type=int, metavar="N",
                   help="merge the N complete shard files into the task's table")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="worker processes, one thread each (default: one per CPU core); "
                   "small models evaluate faster side by side than multi-threaded")
    p.add_argument("--force", action="store_true", help="discard an existing table and rebuild")
    p.add_argument("--export", action="store_true",
                   help="copy the built table and weights to tasks/artifacts/ (maintainers)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--data-dir", help="dataset folder (also $MQBENCH_DATA)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("eval", help="score a proxy against tasks' ground-truth tables",
                       description="Load a proxy (file path or registered name), run it "
                       "isolated on each task's cached statistics, and report Spearman, "
                       "Kendall, Spearman@top-k, layer-level Spearman and the accuracy of its "
                       "ILP bit allocations. Builds the task's table on first use. Results are "
                       "recorded under leaderboard/records/ unless --no-record.")
    p.add_argument("--proxy", required=True, help="proxy file (proxies/NAME.py) or name")
    p.add_argument("--task", action="append",
                   help="task name or .toml path; repeat for several (default: bundled task)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per proxy call")
    p.add_argument("--mem-mb", type=int, default=4096, help="memory allowed to the proxy (MiB)")
    p.add_argument("--no-record", action="store_true", help="do not write to the leaderboard")
    p.add_argument("--replace", action="store_true",
                   help="overwrite the stored record even if proxy, task and package versions "
                   "are unchanged (by default such a re-run keeps the stored record)")
    p.add_argument("--data-dir", help="dataset folder (also $MQBENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("measure", help="quantize and evaluate one bit configuration",
                       description="Evaluate one configuration with the task's quantizer. "
                       "Units not named in --bits get the highest weight bit choice.")
    p.add_argument("task", nargs="?", default=None, help="task name (default: bundled task)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="canonical key, e.g. 'w:4.2.3|a:8.8.8'")
    g.add_argument("--bits", help="per-unit weight bits, e.g. 'conv1=8,layer1.0.conv1=2'")
    p.add_argument("--cal-seed", type=int, help="calibration seed (default: the task seed)")
    p.add_argument("--data-dir", help="dataset folder (also $MQBENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("submit-check", help="validate a new proxy file before a pull request",
                       description="Check a proxy file as CI does: contract (one @proxy, "
                       "name not taken by another file), conformance suite, isolated run "
                       "(no network, no writes outside a scratch directory, time and memory "
                       "limits) and scoring on each task; writes its record files only if "
                       "everything passed. Exit code 0 = passed, 1 = a check failed, 2 = bad "
                       "input.")
    p.add_argument("proxy", help="the proxy file, e.g. proxies/my_proxy.py")
    p.add_argument("--task", action="append",
                   help="task name or .toml path; repeat for several (default: fmnist-resnet8 "
                   "and fmnist-vit)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per proxy call")
    p.add_argument("--mem-mb", type=int, default=4096, help="memory allowed to the proxy (MiB)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    p.add_argument("--no-record", action="store_true", help="check only; write no records")
    p.add_argument("--data-dir", help="dataset folder (also $MQBENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_submit_check)

    p = sub.add_parser("proxies", help="list the registered proxies",
                       description="List the proxies found in proxies/ and $MQBENCH_PROXIES.")
    p.set_defaults(func=cmd_proxies)

    p = sub.add_parser("leaderboard", help="rebuild the database, print or regenerate tables",
                       description="`rebuild`: recreate leaderboard/mqbench.duckdb from the "
                       "record files. `table`: print comparison tables (EMQ-style correlation, "
                       "TAP-style downstream) as Markdown, CSV or LaTeX. `regenerate`: rebuild "
                       "the database and write every published artifact: leaderboard/tables/, "
                       "the plots and static page in leaderboard/site/, and README.md's "
                       "leaderboard section.")
    p.add_argument("action", choices=["rebuild", "table", "regenerate"])
    p.add_argument("--task", action="append", help="task name(s) for `table` (repeatable)")
    p.add_argument("--kind", action="append", choices=["correlation", "downstream"],
                   help="which table(s) for `table` (default both)")
    p.add_argument("--format", default="md", choices=["md", "csv", "tex"],
                   help="output format for `table` (default md)")
    p.add_argument("--no-readme", action="store_true",
                   help="`regenerate`: leave README.md alone")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("discover", help="evolve a new proxy (symbolic search) and write it",
                       description="TAP/EMQ-style automatic proxy discovery. The offline "
                       "`symbolic` generator evolves expression trees over per-layer "
                       "statistics (EMQ's search space) and scores each candidate with TAP's "
                       "fitness phi = alpha*rho_sens + (1-alpha)*Acc from cached statistics "
                       "and the task's table (well under a millisecond per candidate). The "
                       "best proxy is written as a registered proxy file; a checkpoint is "
                       "saved after every generation (--resume continues it).")
    p.add_argument("--task", help="training task (default: the bundled task)")
    p.add_argument("--generator", default="symbolic", choices=["symbolic", "openai", "hf"],
                   help="candidate generator: symbolic (offline, default), openai (any "
                   "OpenAI-compatible chat endpoint) or hf (a local transformers causal LM, "
                   "fine-tuned with DPO on LoRA adapters as it goes)")
    p.add_argument("--model", help="openai: model name (or $MQBENCH_LLM_MODEL); hf: local "
                   "model directory")
    p.add_argument("--base-url", help="openai: endpoint, e.g. http://127.0.0.1:8000/v1 "
                   "(or $OPENAI_BASE_URL)")
    p.add_argument("--api-key", help="openai: API key (or $OPENAI_API_KEY)")
    p.add_argument("--adapter", help="hf: LoRA adapter directory to start from")
    p.add_argument("--max-new-tokens", type=int, default=512,
                   help="hf: answer length limit in tokens (default 512)")
    p.add_argument("--dpo-every", type=int, default=1,
                   help="hf: one DPO update of the generator's LoRA adapter every K "
                   "generations from that generation's children (default 1; 0: never)")
    p.add_argument("--dpo-margin", type=float, default=0.01,
                   help="openai/hf: minimum fitness gap of a preference pair (default 0.01)")
    p.add_argument("--generations", type=int, default=30, help="generations (default 30)")
    p.add_argument("--population", type=int, default=64, help="population size (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="proxies/discovered_symbolic.py",
                   help="proxy file to write; its name is the proxy's name")
    p.add_argument("--holdout", action="append",
                   help="task(s) to report the discovered proxy on, never searched on")
    p.add_argument("--checkpoint", help="checkpoint file (default: next to --out)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("automixq", help="AutoMixQ 2/4-bit search on an LM task + Table 1",
                       description="AutoMixQ (mixed-precision protection with four channel "
                       "strategies, plus the global search of the paper's Algorithm 1 guided "
                       "by CE + alpha*T^2*KL on the validation windows) on a language-model "
                       "task, from all-4-bit down to each budget. Then compares test "
                       "perplexity with uniform 2/3/4-bit, random 2/4-bit mixed precision at "
                       "the same budgets and the proxies' ILP allocations from the leaderboard, "
                       "in the shape of the paper's Table 1. Checkpointed every cycle.")
    p.add_argument("--task", help="LM task (default: pydocs-llama)")
    p.add_argument("--budgets", type=float, nargs="+",
                   help="average weight bits to stop at (default: the task's, 3.0..3.75)")
    p.add_argument("--random-seeds", type=int, default=3,
                   help="draws of the random mixed-precision baseline (default 3)")
    p.add_argument("--out", default="leaderboard/lm", help="folder for the report and JSON")
    p.add_argument("--checkpoint", help="search checkpoint (default: in --out)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_automixq)

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
        code = args.func(args)
    except MqbenchError as exc:
        print(f"mqbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mqbench: interrupted; `mqbench build` resumes where it stopped", file=sys.stderr)
        return 130
    return code or 0  # a command may return 1: checks ran and failed


if __name__ == "__main__":
    sys.exit(main())
