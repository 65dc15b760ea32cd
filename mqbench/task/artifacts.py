"""Shipped artifacts: the committed `tasks/artifacts/SHA256SUMS` that pins every file there.

A shipped table carries its own rows checksum in `table_meta.json`, but an edit of the table
*and* that file would pass it; the manifest is a separate, reviewed file, so changing an
artifact without changing SHA256SUMS (a visible line in any pull request) is refused.
Format: `sha256sum`'s (`<hex>  <task key>/<file>`), so `sha256sum -c` checks it too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mqbench.errors import MqbenchError
from mqbench.paths import atomic_path, shipped_root


def manifest_path() -> Path:
    return shipped_root() / "SHA256SUMS"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pinned(manifest: Path | None = None) -> dict[str, str]:
    """`task key/file` -> sha256 from the manifest ({} when there is none)."""
    manifest = manifest or manifest_path()
    if not manifest.exists():
        return {}
    out = {}
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise MqbenchError(f"{manifest}:{n}: expected '<sha256>  <key>/<file>', got "
                               f"{line[:60]!r}")
        out[name.strip()] = digest
    return out


def verify(path: Path, manifest: Path | None = None) -> None:
    """Refuse a shipped file whose bytes differ from the manifest, or that it does not list."""
    manifest = manifest or manifest_path()
    name = path.relative_to(manifest.parent).as_posix()
    want = pinned(manifest).get(name)
    if want is None:
        raise MqbenchError(f"shipped file {path} is not listed in {manifest}; maintainers add it "
                           f"with `mqbench build --task <task> --export`")
    if file_sha256(path) != want:
        raise MqbenchError(f"shipped file {path} does not match its checksum in {manifest} "
                           f"(edited or corrupt); restore it with `git checkout -- {path}`")


def pin(paths: list[Path], manifest: Path | None = None) -> None:
    """Record the current bytes of `paths` in the manifest (used by `build --export`)."""
    manifest = manifest or manifest_path()
    sums = pinned(manifest)
    for path in paths:
        sums[path.relative_to(manifest.parent).as_posix()] = file_sha256(path)
    with atomic_path(manifest) as tmp:
        tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
