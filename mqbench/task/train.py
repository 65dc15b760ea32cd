"""Deterministic CPU training of the bundled tasks' models, cached with a checksum.

Same task version and seed on the same software stack -> the same weights (checked by
`weights_checksum`). The cache lives under `cache_dir()/models/<task>-v<version>/`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import contextmanager

import torch
from torch import nn

from mqbench.errors import MqbenchError
from mqbench.paths import atomic_path, cache_dir, shipped_dir
from mqbench.progress import bar as progress_bar
from mqbench.task import artifacts
from mqbench.task.datasets import Split, to_input


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names, shapes, dtypes and raw bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


TRAIN_THREADS = 2  # float reductions depend on the thread count: fix it for equal weights


@contextmanager
def deterministic(seed: int):
    """Seeded, deterministic-kernel, fixed-thread region; restores global state afterwards."""
    previous, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(TRAIN_THREADS)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.set_num_threads(threads)


def train_model(model: nn.Module, data: Split, mean, std, spec, seed: int,
                progress: bool = True) -> nn.Module:
    """Train `model` in place with the task's TrainSpec; returns it in eval mode."""
    with deterministic(seed):
        gen = torch.Generator().manual_seed(seed)
        n = len(data)
        steps_per_epoch = (n + spec.batch_size - 1) // spec.batch_size
        total = spec.epochs * steps_per_epoch
        if spec.max_steps:
            total = min(total, spec.max_steps)
        if spec.optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, nesterov=True,
                                  weight_decay=spec.weight_decay)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=spec.lr,
                                    weight_decay=spec.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=total,
                                                    pct_start=0.25)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        step = 0
        bar = progress_bar(total, "train", progress, unit="step")
        while step < total:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, spec.batch_size):
                if step >= total:
                    break
                idx = perm[i:i + spec.batch_size]
                x = to_input(data.x[idx], mean, std)
                if spec.flip:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                loss = loss_fn(model(x), data.y[idx].reshape(-1))  # LM: one label per token
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
    return model.eval()


def load_or_train(task, model: nn.Module, train_split_fn, mean, std,
                  progress: bool = True) -> tuple[nn.Module, dict]:
    """Load the task's trained weights (verifying their checksum) or train and cache them.

    Looks in the cache, then in the weights shipped with the repository (copied into the
    cache), and trains only when neither exists. Returns the model and the manifest
    (checksum, seed, versions, training time).
    """
    folder = cache_dir() / "models" / task.model_key  # one model for every quantizer method
    weights, manifest_path = folder / "weights.pt", folder / "manifest.json"
    shipped = shipped_dir(task.model_key)
    if not weights.exists() and (shipped / "weights.pt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        # manifest first, weights last: a reader that sees the weights sees both complete
        for name, dst in (("manifest.json", manifest_path), ("weights.pt", weights)):
            artifacts.verify(shipped / name)
            with atomic_path(dst) as tmp:
                shutil.copyfile(shipped / name, tmp)
    if weights.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception:
            raise MqbenchError(f"cached weights {weights} are unreadable; delete {folder} and "
                               f"rerun to retrain") from None
        if weights_checksum(state) != manifest.get("checksum"):
            raise MqbenchError(f"cached weights {weights} fail their checksum (modified or "
                               f"corrupt); delete {folder} and rerun to retrain")
        return model.eval(), manifest
    start = time.perf_counter()
    model = train_model(model, train_split_fn(), mean, std, task.model.train, task.seed, progress)
    state = model.state_dict()
    manifest = {"task": task.model_key, "seed": task.seed, "checksum": weights_checksum(state),
                "torch": torch.__version__, "threads": TRAIN_THREADS,
                "train_seconds": round(time.perf_counter() - start, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    # atomic and unique per writer: two first-time runs racing never share a temporary file,
    # and a crash never leaves half a checkpoint; manifest first, weights last (see above)
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    with atomic_path(weights) as tmp:
        torch.save(state, tmp)
    return model, manifest
