"""Rebuild a protocol-2 table after its *sample plan* changed, reusing the shipped rows that
the new plan still holds (maintainers; how the shipped fmnist-vit v2 table was rebuilt when
damage sampling moved from test to validation numbers).

A row is a deterministic function of (task, code, configuration, seed): the evaluator did
not change, so a configuration both plans hold needs no second measurement. The script
starts a fresh table file with the current provenance, copies the shipped fixed rows and the
shipped sample rows the new plan keeps, and resumes the build for the rest, single-threaded
per process like the shipped table's `--jobs 2` workers (thread count changes summation
order in the last float digits). The meta records how many rows were reused and from which
build (`reused_rows`, `reused_from_git_commit`); `build_seconds` counts only the new work.

    python tasks/protocol2/rebuild_reusing_rows.py fmnist-vit
    mqbench build --task fmnist-vit --export
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import torch

from mqbench.paths import shipped_dir
from mqbench.task.spec import load_task
from mqbench.truth import protocol2 as P2
from mqbench.truth.bench import open_bench
from mqbench.truth.build import build_table
from mqbench.truth.store import (columns, connect, read_rows, schema_of, table_path,
                                 table_provenance, write_meta)


def main(name: str) -> None:
    torch.set_num_threads(1)
    task = load_task(name)
    bench = open_bench(task)
    src = shipped_dir(task.key)
    old_meta = json.loads((src / "table_meta.json").read_text())
    path = table_path(task)
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    schema = schema_of(task)
    cols = ", ".join(columns(schema))
    con = connect(path, schema=schema)
    try:
        write_meta(con, {**table_provenance(bench), "shard": "",
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        con.execute(f"CREATE TEMP VIEW old AS SELECT {cols} FROM "
                    f"read_parquet('{src / 'table.parquet'}')")

        def copy(items) -> int:
            keys = pd.DataFrame([(it.kind, it.cal_seed, it.cfg.key) for it in items],
                                columns=["kind", "cal_seed", "key"])
            con.register("wanted", keys)
            n = con.execute("SELECT count(*) FROM old JOIN wanted USING (kind, cal_seed, key)"
                            ).fetchone()[0]
            con.execute(f"INSERT INTO results SELECT {cols} FROM old SEMI JOIN wanted "
                        f"USING (kind, cal_seed, key)")
            con.unregister("wanted")
            return n

        fixed = P2.fixed_items(bench)
        n_fixed = copy(fixed)
        if n_fixed != len(fixed):
            raise SystemExit(f"the shipped table lacks {len(fixed) - n_fixed} fixed rows")
        samples = P2.sample_items(bench, read_rows(con, schema))
        n_samples = copy(samples)
        write_meta(con, {"reused_rows": n_fixed + n_samples,
                         "reused_from_git_commit": old_meta.get("git_commit", "")})
        print(f"{task.key}: reused {n_fixed} fixed and {n_samples} of {len(samples)} sample "
              f"rows; measuring the other {len(samples) - n_samples}", flush=True)
    finally:
        con.close()
    build_table(task)  # resumes: measures what is missing, then checksums and ceilings


if __name__ == "__main__":
    main(sys.argv[1])
