"""Text corpora for language-model tasks, split by file, tokenized into fixed-length windows.

* `python-docs`: the reStructuredText sources of the Python 3.11 documentation, shipped by
  Debian's `python3.11-doc` package (497 files, ~11 MB of English technical prose, about
  WikiText-2's size; real text that installs offline). Files are split by a hash of their
  relative path (90% train, 5% validation, 5% test), so a split never shares a file with
  another and adding a file never moves the others. Each split's file list and content
  sha256 are recorded (`corpus_manifest`), and a task may pin the checksum.
* `wikitext2`: WikiText-2 (raw) through Hugging Face `datasets`, from the hub
  (`hf_name`/`hf_config`) or from a folder written by `Dataset.save_to_disk` / `DatasetDict`
  (`data.root`). Lines are joined with blank lines, as the GPTQ/AWQ evaluation scripts do.

Windows are non-overlapping: the split's token stream is cut into `seq_len + 1` token pieces,
x = piece[:-1], y = piece[1:], the standard perplexity protocol at fixed context.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from mqbench.errors import MqbenchError
from mqbench.task.text import hub

PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")  # Debian python3.11-doc
SPLITS = ("train", "validation", "test")
TEXT_DATASETS = ("python-docs", "wikitext2")


def _split_of(relpath: str) -> str:
    bucket = int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def docs_root(spec) -> Path:
    root = Path(spec.root or os.environ.get("MQBENCH_PYDOCS") or PYTHON_DOCS_DIR)
    if not root.is_dir() or not any(root.rglob("*.txt")):
        raise MqbenchError(f"Python documentation sources not found at {root}; install them "
                           f"with `apt-get install python3.11-doc` (Debian/Ubuntu) or point "
                           f"data.root / $MQBENCH_PYDOCS at a folder of .txt files")
    return root


def docs_files(spec, split: str) -> list[Path]:
    """The corpus files of `split`, in sorted relative-path order."""
    root = docs_root(spec)
    files = sorted(root.rglob("*.txt"), key=lambda p: p.relative_to(root).as_posix())
    return [p for p in files if _split_of(p.relative_to(root).as_posix()) == split]


@functools.lru_cache(maxsize=8)  # read once per process: every split load checks it
def corpus_manifest(spec) -> dict:
    """Per split: file count, characters and a sha256 over (relative path, content) pairs."""
    if spec.dataset != "python-docs":
        return {"dataset": spec.dataset, "hf_name": spec.hf_name, "hf_config": spec.hf_config,
                "root": spec.root}
    root = docs_root(spec)
    out = {"dataset": spec.dataset, "root": str(root)}
    for split in SPLITS:
        h, chars, files = hashlib.sha256(), 0, docs_files(spec, split)
        for p in files:
            text = p.read_bytes()
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + text + b"\0")
            chars += len(text)
        out[split] = {"files": len(files), "bytes": chars, "sha256": h.hexdigest()}
    return out


def check_pinned(spec) -> None:
    """If the task pins the corpus checksum, refuse a different corpus (tables would differ)."""
    if spec.dataset != "python-docs" or not spec.corpus_sha256:
        return
    got = corpus_sha256(spec)
    if got != spec.corpus_sha256:
        raise MqbenchError(f"the text corpus at {docs_root(spec)} (sha256 {got[:12]}...) is not "
                           f"the one this task was built on ({spec.corpus_sha256[:12]}...); "
                           f"install Debian's python3.11-doc 3.11.2 or bump the task version "
                           f"and update data.corpus_sha256")


def corpus_sha256(spec) -> str:
    m = corpus_manifest(spec)
    return hashlib.sha256(json.dumps({s: m[s]["sha256"] for s in SPLITS}).encode()).hexdigest()


def split_text(spec, split: str) -> str:
    """The raw text of one split."""
    if spec.dataset == "python-docs":
        return "\n\n".join(p.read_text(encoding="utf-8", errors="replace")
                           for p in docs_files(spec, split))
    if spec.dataset == "wikitext2":
        return _wikitext(spec, split)
    raise MqbenchError(f"{spec.dataset!r} is not a text dataset; use one of "
                       f"{', '.join(TEXT_DATASETS)}")


def _wikitext(spec, split: str) -> str:
    try:
        import datasets  # lazy: optional extra `hf`, and slow to import
    except ImportError:
        raise MqbenchError("WikiText-2 needs Hugging Face `datasets`: pip install "
                           "'mqbench[hf]'") from None
    try:
        if spec.root:
            ds = datasets.load_from_disk(spec.root)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:

            name, config = spec.hf_name or "wikitext", spec.hf_config or "wikitext-2-raw-v1"
            if not hub.reachable():  # the cache only: no 30 s of retries when offline
                import huggingface_hub.constants  # lazy: only when reaching the hub

                for mod, key in ((datasets.config, "HF_HUB_OFFLINE"),
                                 (datasets.config, "HF_DATASETS_OFFLINE"),
                                 (huggingface_hub.constants, "HF_HUB_OFFLINE")):
                    if hasattr(mod, key):
                        setattr(mod, key, True)
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        where = spec.root or f"the hub ({spec.hf_name or 'wikitext'})"
        raise MqbenchError(
            f"could not load WikiText-2 split {split!r} from {where} ({type(exc).__name__}); "
            f"download it once with internet access (cached under $HF_HOME) or save it with "
            f"`datasets.load_dataset('wikitext', 'wikitext-2-raw-v1').save_to_disk(DIR)` and "
            f"set data.root = DIR") from None
    if "text" not in ds.column_names:
        raise MqbenchError(f"dataset at {where if spec.root else spec.hf_name} has no 'text' "
                           f"column (columns: {', '.join(ds.column_names)})")
    return "\n\n".join(ds["text"])


def windows(ids: np.ndarray, seq_len: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into non-overlapping (x, y) windows of seq_len tokens."""
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise MqbenchError(f"{what} has {len(ids)} tokens, too short for one window of "
                           f"data.seq_len = {seq_len}; lower seq_len or give more text")
    t = torch.from_numpy(np.asarray(ids[: n * seq_len + 1], dtype=np.int64))
    return t[:-1].view(n, seq_len).clone(), t[1:].view(n, seq_len).clone()
