"""The AutoMixQ pipeline behind `mqbench automixq`: search, compare with baselines, write."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mqbench.board.report import load_records
from mqbench.errors import MqbenchError
from mqbench.search.automixq.compare import compare, markdown, write
from mqbench.search.automixq.search import Search
from mqbench.task.spec import Task, check_budgets
from mqbench.truth.bench import open_bench


@dataclass(frozen=True)
class Outcome:
    """What one run wrote: the Table-1 text, its JSON and Markdown files, the checkpoint."""

    table: str
    json_path: Path
    markdown_path: Path
    checkpoint: Path


def with_budgets(task: Task, budgets: tuple[float, ...] | None) -> Task:
    """`task` with its AutoMixQ budgets replaced (checked like the task file's)."""
    if not budgets:
        return task
    check_budgets(task, list(budgets), "--budgets")
    return dataclasses.replace(task, automixq=dataclasses.replace(task.automixq,
                                                                  budgets=tuple(budgets)))


def run(task: Task, out: Path, checkpoint: Path | None = None, resume: bool = False,
        budgets: tuple[float, ...] | None = None, random_seeds: int = 3,
        progress: bool = True) -> Outcome:
    """Search `task` down through its budgets, then compare against uniform, random and ILP."""
    if not task.is_lm:
        raise MqbenchError(f"AutoMixQ searches language-model tasks; {task.name} is not one "
                           f"(try --task pydocs-llama)")
    if random_seeds < 1:
        raise MqbenchError(f"--random-seeds {random_seeds}: need at least one draw")
    task = with_budgets(task, budgets)
    ckpt = checkpoint or out / f"{task.key}-automixq.ckpt.json"
    search = Search(open_bench(task, progress=progress), progress=progress)
    state = search.run(ckpt, resume=resume)
    result = compare(search, state, load_records(task.label), random_seeds=random_seeds)
    js, md = write(result, out)
    return Outcome(markdown(result), js, md, ckpt)
