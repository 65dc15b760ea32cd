"""The SLURM backend: the batches as one job array through submitit (`--backend slurm`).

Partition, time limit, GPUs and array parallelism come from flags or a `[slurm]` section of
`--cluster-config`; other keys of that section are passed to sbatch (account, qos, ...).
Each array task logs to `<log dir>/<job id>_<index>_*.out/err` (submitit's folder). A task
that ends without a result (pre-empted, timed out, node failure) is resubmitted alone, up
to `retries` times. `executor = "local"` or `"debug"` runs the same code without SLURM
(submitit's local executors; the local one starts every array task at once: tests only).
Workers need $MQBENCH_CACHE on a filesystem the nodes share.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mqbench.errors import MqbenchError
from mqbench.paths import cache_dir


def _submitit():
    try:
        import submitit  # optional extra [cluster]; only --backend slurm needs it
    except ImportError:
        raise MqbenchError("--backend slurm needs submitit: pip install 'mqbench[cluster]'") \
            from None
    return submitit


def check(opts) -> None:
    _submitit()
    if opts.executor != "slurm":
        return
    if shutil.which("sbatch") is None:
        raise MqbenchError("--backend slurm: no `sbatch` on PATH; run from a SLURM login node, "
                           "or use --backend local or ray")
    if opts.partition:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True,
                             timeout=20)
        names = sorted(set(out.stdout.split()))
        if out.returncode != 0 or opts.partition not in names:
            raise MqbenchError(f"SLURM partition {opts.partition!r} does not exist (sinfo lists: "
                               f"{', '.join(names) or 'none'}); fix --partition")


def executor(opts, name: str):
    submitit = _submitit()
    folder = Path(opts.log_dir or cache_dir() / "slurm-logs") / "%j"
    ex = submitit.AutoExecutor(folder=folder,
                               cluster=None if opts.executor == "slurm" else opts.executor)
    params = {"timeout_min": opts.time_min, "gpus_per_node": opts.gpus, "cpus_per_task": 1,
              "name": name}
    if opts.executor == "slurm":
        params.update(slurm_array_parallelism=opts.parallelism or 1024)
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.sbatch:
            params["slurm_additional_parameters"] = dict(opts.sbatch)
    ex.update_parameters(**params)
    return ex


def run(fn: Callable, batches: list, opts, poll_s: float | None = None) -> Iterator[tuple[int,
                                                                                          object]]:
    submitit = _submitit()
    ex = executor(opts, "mqbench-build")
    poll_s = poll_s if poll_s is not None else (10.0 if opts.executor == "slurm" else 0.2)
    try:
        jobs = dict(enumerate(ex.map_array(fn, batches)))
    except submitit.core.utils.FailedSubmissionError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise MqbenchError(f"sbatch refused the job array: {first}") from None
    tries = dict.fromkeys(jobs, 0)
    try:
        while jobs:
            finished = [i for i, job in jobs.items() if job.done()]
            if not finished:
                time.sleep(poll_s)
                continue
            for i in finished:
                job = jobs.pop(i)
                try:
                    result = job.result()
                except submitit.core.utils.FailedJobError as exc:
                    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                    raise MqbenchError(f"build batch {i} failed on SLURM (job {job.job_id}): "
                                       f"{last}; log in {job.paths.stderr}") from None
                except submitit.core.utils.UncompletedJobError:
                    tries[i] += 1
                    if tries[i] > opts.retries:
                        raise MqbenchError(f"build batch {i} ended without a result "
                                           f"{tries[i]} times (job {job.job_id}); rerun the "
                                           f"same command to resume") from None
                    jobs[i] = ex.submit(fn, batches[i])
                    continue
                yield i, result
    finally:
        for job in jobs.values():
            try:
                job.cancel(check=False)
            except Exception:  # the job may already be gone; cancelling is best effort
                pass
