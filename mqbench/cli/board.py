"""`mqbench leaderboard table | rebuild | regenerate`: the leaderboard's views and files."""

from __future__ import annotations

from mqbench.board.publish import regenerate
from mqbench.board.report import RENDERERS, TABLES, record_tasks, render
from mqbench.board.store import rebuild_db, upgrade_records
from mqbench.cli import args as A
from mqbench.errors import MqbenchError, did_you_mean
from mqbench.paths import leaderboard_dir, readme_path


def cmd_table(args) -> None:
    known = record_tasks()
    for task in A.task_names(args):
        if task not in known:
            raise MqbenchError(f"no leaderboard records for task {task!r}"
                               f"{did_you_mean(task, known)}; run `mqbench eval --task "
                               f"{task}` first")
        for kind in args.kind or list(TABLES):
            print(render(task, kind, args.format))


def cmd_rebuild(args) -> None:
    print(f"rebuilt {rebuild_db()} from {leaderboard_dir() / 'records'}")


def cmd_upgrade(args) -> None:
    done = upgrade_records()
    print(f"upgraded {len(done)} record file(s) to the current schema"
          + "".join(f"\n  {p}" for p in done))


def cmd_regenerate(args) -> None:
    paths = regenerate(readme=None if args.no_readme else readme_path())
    print(f"regenerated {len(paths)} files: tables in {leaderboard_dir() / 'tables'}, "
          f"page and plots in {leaderboard_dir() / 'site'}"
          + ("" if args.no_readme else ", README.md leaderboard section"))


def register(sub) -> None:
    top = sub.add_parser("leaderboard", help="print tables, rebuild the database, regenerate "
                         "the published files",
                         description="The leaderboard: records under leaderboard/records/, "
                         "indexed in leaderboard/mqbench.duckdb.")
    actions = top.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("table", help="print comparison tables",
                           description="Print the EMQ-style correlation table and the TAP-style "
                           "downstream table of each task as Markdown, CSV or LaTeX.",
                           epilog="example: mqbench leaderboard table --task fmnist-vit "
                           "--kind correlation --format tex")
    A.add_tasks(p)
    p.add_argument("--kind", action="append", choices=list(TABLES),
                   help="which table(s) (default: all)")
    p.add_argument("--format", default="md", choices=list(RENDERERS),
                   help="output format (default md)")
    p.set_defaults(func=cmd_table)

    p = actions.add_parser("rebuild", help="recreate the DuckDB index from the record files",
                           description="Recreate leaderboard/mqbench.duckdb from the record "
                           "files (it is never committed).")
    p.set_defaults(func=cmd_rebuild)

    p = actions.add_parser("upgrade", help="rewrite older-schema record files in place",
                           description="Rewrite record files written by an older mqbench in "
                           "the current record schema (readers upgrade them on the fly; this "
                           "makes the files themselves current).")
    p.set_defaults(func=cmd_upgrade)

    p = actions.add_parser("regenerate", help="rebuild the index and write every published "
                           "file", description="Rebuild the database and write every published "
                           "artifact: leaderboard/tables/, the plots and static page in "
                           "leaderboard/site/, and README.md's leaderboard section.")
    p.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    p.set_defaults(func=cmd_regenerate)
