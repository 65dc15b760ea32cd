"""Test helpers shipped with the package (like optuna.testing): tiny task files, canned LLM
answers, a best-of timer, a build worker that dies once, a private single-node SLURM. Used
by tests/ and handy for plugin authors' own tests; nothing in mqbench imports it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from mqbench.truth.work import measure_batch

TINY_TASK = """
name = "{name}"
version = {version}
seed = 0
description = "tiny test task"
[model]
arch = "resnet8"
width = 8
[model.train]
epochs = 1
batch_size = 64
lr = 0.05
max_steps = {steps}
[data]
dataset = "digits"
calibration_samples = 64
eval_samples = 120
[quant]
weight_bits = [2, 4, 8]
tie = {{ "layer2.0.downsample.0" = "layer2.0.conv2", "layer3.0.downsample.0" = "layer3.0.conv2" }}
[table]
configs = {configs}
noise_configs = 6
batch_size = 64
"""


def write_task(folder: Path, name: str = "tiny", version: int = 1, configs: int = 24,
               steps: int = 15) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_TASK.format(name=name, version=version, configs=configs, steps=steps))
    return path


def protocol2_text(text: str, name: str, sampling: str = "damage") -> str:
    """A protocol-1 tiny task file turned protocol 2: 240 test and 160 held-out training
    images (`text` is TINY_TASK or a task text with the same fields)."""
    text = text.format(name=name, version=1, configs=24, steps=40)
    text = text.replace("eval_samples = 120",
                        'eval_samples = 240\nval_split = "train"\nval_samples = 160')
    return text.replace("[table]\n", f'[table]\nprotocol = 2\nsampling = "{sampling}"\n')


TINY_LM = """
name = "{name}"
version = 1
seed = 0
description = "tiny LM test task"
[model]
arch = "llama"
source = "train"
dim = 32
depth = 2
heads = 2
ffn = 64
[model.train]
epochs = 1
max_steps = 40
batch_size = 8
lr = 3e-3
optimizer = "adamw"
weight_decay = 0.0
flip = false
[data]
dataset = "python-docs"
root = "{root}"
seq_len = {seq_len}
vocab_size = 300
calibration_samples = 8
eval_split = "test"
eval_samples = 12
[quant]
weight_bits = [2, 3, 4]
act_bits = [32]
layers = ["lm.model.layers.*"]
weight_clip = "max"
fold_bn = false
group_size = 16
[table]
configs = 12
strata = 4
noise_configs = 3
batch_size = 4
[harness]
budgets = [3.0, 3.5]
calibration_batch = 4
[automixq]
budgets = [3.5, 3.0]
fractions = [0.25]
samples = 4
elites = 2
step = 3
aux_samples = 4
"""


def write_corpus(folder: Path) -> Path:
    """Real English text shipped with Python: the pydoc topic help, one file per topic."""
    from pydoc_data.topics import topics  # stdlib data, only needed here

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sorted(topics.items()):
        (folder / f"{name}.txt").write_text(text)
    return folder


# Canned LLM answers for discovery tests: a valid proxy, a variant, and hostile or broken ones.
GOOD = '''Hessian trace per parameter, as HAWQ-V2.
```python
from mqbench.proxy import proxy

@proxy(name="candidate", version=1, kind="layer")
def candidate(stats):
    return [float(stats.hessian_trace[i] / stats.params[i]) for i in range(len(stats.modules))]
```'''
GOOD2 = GOOD.replace("/ stats.params[i]", "* float(stats.weights[m].abs().mean())").replace(
    "for i in range(len(stats.modules))", "for i, m in enumerate(stats.modules)")
NO_CODE = "I think the Hessian matters most, but I will not write code."
SYNTAX = "Broken:\n```python\ndef candidate(stats:\n```"
LOOP = GOOD.replace("    return [", "    while True:\n        pass\n    return [")
WRITER = GOOD.replace("    return [",
                      "    open('/tmp/mqbench_pwned', 'w').write('x')\n    return [")
SOCKET = GOOD.replace("    return [", "    import socket\n"
                      "    socket.create_connection(('127.0.0.1', PORT))\n    return [")
NAN = GOOD.replace("float(stats.hessian_trace[i] / stats.params[i])", "float('nan')")
ANSWERS = [GOOD, NO_CODE, SYNTAX, LOOP, WRITER, SOCKET, NAN, GOOD2]


def best_of(fn, n: int = 5) -> float:
    """The fastest of n timed calls of `fn` (after one warm-up call), in seconds."""
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def dies_once(batch):
    """A build worker that measures its batch, then is SIGKILLed the first time it runs in
    a fresh marker folder ($MQBENCH_TEST_DIE_DIR): a worker lost mid-batch, for the
    backends' retry tests. Later calls behave as `measure_batch`."""
    result = measure_batch(batch)
    marker = Path(os.environ["MQBENCH_TEST_DIE_DIR"]) / "died"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return result
    os.kill(os.getpid(), signal.SIGKILL)
    return result


SLURM_CONF = """ClusterName=mqbench-test
SlurmctldHost=localhost
SlurmctldAddr=127.0.0.1
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmdSpoolDir={d}/spool
StateSaveLocation={d}/state
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
SlurmdUser={user}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName=localnode NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localnode Default=YES MaxTime=INFINITE State=UP
"""


def start_slurm(folder: Path, timeout_s: float = 60.0):
    """A private single-node SLURM (munged, slurmctld, slurmd on 127.0.0.1) for tests.

    Returns `(env, stop)`: the environment (SLURM_CONF) under which sbatch/sinfo talk to it
    and a function that stops it; or `(None, reason)` when it cannot come up here (not root,
    Debian's slurm-wlm not installed, daemons not idle within `timeout_s`).
    """
    if os.geteuid() != 0:
        return None, "a private SLURM needs root (slurmd runs jobs as their user)"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo")
               if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return None, f"not installed: {', '.join(missing)} (apt-get install slurm-wlm)"

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    d = Path(folder)
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    key = d / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(d=d, ctld_port=port(), d_port=port(), user="root",
                                      cpus=os.cpu_count() or 1))
    env = {**os.environ, "SLURM_CONF": str(conf)}

    def sbin(b: str) -> str:
        return shutil.which(b) or f"/usr/sbin/{b}"

    def stop() -> None:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, check=False)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            try:
                os.kill(int((d / pid_file).read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    steps = [[sbin("munged"), f"--key-file={key}", f"--socket={d}/munge.sock",
              f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log",
              f"--seed-file={d}/munge.seed", "--force"],
             [sbin("slurmctld"), "-f", str(conf)],
             [sbin("slurmd"), "-f", str(conf), "-N", "localnode"]]
    for cmd in steps:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            stop()
            return None, f"{Path(cmd[0]).name} failed: {(out.stderr or out.stdout).strip()[:200]}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                             text=True, check=False)
        if out.returncode == 0 and out.stdout.strip() == "idle":
            return env, stop
        time.sleep(1)
    stop()
    return None, f"slurmd not idle within {timeout_s:.0f} s (logs in {d})"
