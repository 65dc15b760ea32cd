"""`mqbench tasks`: the registered tasks."""

from __future__ import annotations

from mqbench.task.spec import DEFAULT_TASK, list_tasks, load_task


def cmd_tasks(args) -> None:
    for name in list_tasks():
        task = load_task(name)
        mark = " (default)" if name == DEFAULT_TASK else ""
        print(f"{name:24s} v{task.version}  {task.description}{mark}")


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list the registered tasks",
                       description="List the task files found in tasks/ and $MQBENCH_TASKS.")
    p.set_defaults(func=cmd_tasks)
