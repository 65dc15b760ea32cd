"""`mqbench discover` and `mqbench automixq`: searches that use the benchmark."""

from __future__ import annotations

from pathlib import Path

from mqbench.cli import args as A
from mqbench.search.automixq.run import run as run_automixq
from mqbench.search.evolution.discover import LLMOptions, discover, format_report
from mqbench.search.evolution.loop import GENERATORS, Settings
from mqbench.task.spec import load_task


def cmd_discover(args) -> None:
    tasks = A.tasks(args)  # several: the fitness is the mean over them
    settings = Settings(",".join(t.label for t in tasks), generator=args.generator,
                        generations=args.generations, population=args.population,
                        seed=args.seed, margin=args.dpo_margin, dpo_every=args.dpo_every,
                        max_new_tokens=args.max_new_tokens, fitness_split=args.fitness_split,
                        budget=args.budget)
    llm = LLMOptions(model=args.model or "", base_url=args.base_url or "",
                     api_key=args.api_key or "", adapter=args.adapter)
    rep = discover(tasks[0] if len(tasks) == 1 else tasks, settings, Path(args.out),
                   holdout=tuple(load_task(h) for h in A.split_names(args.holdout)),
                   workdir=Path(args.checkpoint) if args.checkpoint else None,
                   resume=args.resume, progress=not args.quiet, llm=llm)
    print(format_report(rep))


def cmd_automixq(args) -> None:
    task = A.one_task(args, "automixq", default="pydocs-llama")
    out = run_automixq(task, Path(args.out), Path(args.checkpoint) if args.checkpoint else None,
                       args.resume, tuple(args.budgets or ()), args.random_seeds,
                       progress=not args.quiet)
    print(out.table)
    print(f"written {out.markdown_path} and {out.json_path}; checkpoint {out.checkpoint}")


def register(sub) -> None:
    p = sub.add_parser("discover", help="evolve a new proxy (symbolic search) and write it",
                       description="TAP/EMQ-style automatic proxy discovery. The offline "
                       "`symbolic` generator evolves expression trees over per-layer "
                       "statistics (EMQ's search space) and scores each candidate with TAP's "
                       "fitness phi = alpha*rho_sens + (1-alpha)*Acc from cached statistics "
                       "and the task's table (well under a millisecond per candidate); the "
                       "openai and hf generators ask an LLM for proxy code and score it in the "
                       "sandbox. The best proxy is written as a registered proxy file. The run "
                       "folder keeps a checkpoint after every generation (--resume continues "
                       "it exactly) and a log of every candidate.")
    A.add_tasks(p, what="search task (several: the fitness is their mean)")
    p.add_argument("--generator", default="symbolic", choices=list(GENERATORS),
                   help="candidate generator: symbolic (offline, default), random (random "
                   "search over the same expressions: the baseline), openai (any "
                   "OpenAI-compatible chat endpoint) or hf (a local transformers causal LM, "
                   "fine-tuned with DPO on LoRA adapters as it goes)")
    p.add_argument("--model", help="openai: model name (or $MQBENCH_LLM_MODEL); hf: local "
                   "model directory")
    p.add_argument("--base-url", help="openai: endpoint, e.g. http://127.0.0.1:8000/v1 "
                   "(or $OPENAI_BASE_URL)")
    p.add_argument("--api-key", help="openai: API key (or $OPENAI_API_KEY)")
    p.add_argument("--adapter", help="hf: LoRA adapter directory to start from")
    p.add_argument("--fitness-split", default="val", choices=["val", "test"],
                   help="table split candidates are ranked on: val (the validation split of "
                   "a protocol-2 table, default) or test (protocol-1 tables, which have no "
                   "other; the winner's test numbers on the search task are then in-sample)")
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
    p.add_argument("--budget", type=A.nonnegative_int, default=0, metavar="N",
                   help="stop after N candidate evaluations (default 0: --generations "
                   "decides); compare generators, e.g. symbolic against random, at equal N")
    p.add_argument("--out", default="proxies/discovered_symbolic.py",
                   help="proxy file to write; its name is the proxy's name")
    p.add_argument("--holdout", action="append",
                   help="task(s) to report the discovered proxy on, never searched on")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="run folder: checkpoint.json, candidates.jsonl and, for LLMs, the "
                   "answer cache, pairs.jsonl and adapters (default: next to --out, OUT.run/)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    A.add_quiet(p)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("automixq", help="AutoMixQ 2/4-bit search on an LM task + Table 1",
                       description="AutoMixQ (mixed-precision protection with four channel "
                       "strategies, plus the global search of the paper's Algorithm 1 guided "
                       "by CE + alpha*T^2*KL on the validation windows) on a language-model "
                       "task, from all-4-bit down to each budget. Then compares test "
                       "perplexity with uniform 2/3/4-bit, random 2/4-bit mixed precision at "
                       "the same budgets and the proxies' ILP allocations from the leaderboard, "
                       "in the shape of the paper's Table 1. Checkpointed every cycle.",
                       epilog="example: mqbench automixq --task pydocs-llama --budgets 3.5")
    A.add_tasks(p, default="pydocs-llama", what="language-model task")
    p.add_argument("--budgets", type=float, nargs="+",
                   help="average weight bits to stop at (default: the task's, 3.0..3.75)")
    p.add_argument("--random-seeds", type=A.positive_int, default=3,
                   help="draws of the random mixed-precision baseline (default 3)")
    p.add_argument("--out", default="leaderboard/lm", help="folder for the report and JSON")
    p.add_argument("--checkpoint", help="search checkpoint (default: in --out)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    A.add_quiet(p)
    p.set_defaults(func=cmd_automixq)
