"""Atomic checkpoints of a training run: the train state, where the run is, and the config.

A checkpoint is a folder ``<workdir>/checkpoints/<stage>-<step>`` holding ``state.npz`` (every array
of the state, in the order of ``jax.tree.flatten``) and ``meta.json``. It is written under a temporary
name and renamed into place in one step, so a crash mid-write never leaves a checkpoint that looks
complete; :func:`latest` only sees renamed folders.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile

import jax
import numpy as np

_NAME = re.compile(r"^(\d+)-(\d+)$")


def save(workdir: str, state, meta: dict, *, keep: int = 3) -> str:
    """Writes ``state`` (any pytree of arrays) and ``meta`` (JSON-able, must hold ``stage`` and ``step``;
    ``healthy`` False marks a checkpoint written after training went wrong).

    Keeps the ``keep`` newest checkpoints and the newest healthy one. Returns the checkpoint's folder.
    """
    root = os.path.join(workdir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"{int(meta['stage'])}-{int(meta['step']):08d}")
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
        with open(os.path.join(tmp, "state.npz"), "wb") as f:
            np.savez(f, *leaves)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({**meta, "num_arrays": len(leaves)}, f, indent=2)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = list_checkpoints(workdir)
    healthy = [path for path in found if is_healthy(path)]
    for old in found[:-keep]:
        if not healthy or old != healthy[-1]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def mark_unhealthy(path: str) -> None:
    """Marks a checkpoint as written while training went wrong (its meta.json, rewritten atomically)."""
    meta_path = os.path.join(path, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    with open(meta_path + ".tmp", "w") as f:
        json.dump({**meta, "healthy": False}, f, indent=2)
    os.replace(meta_path + ".tmp", meta_path)


def is_healthy(path: str) -> bool:
    """Whether a checkpoint was written while training was healthy (checkpoints without the mark are)."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            return bool(json.load(f).get("healthy", True))
    except (OSError, ValueError):
        return False


def list_checkpoints(workdir: str) -> list[str]:
    """Complete checkpoints of ``workdir``, oldest first (by stage, then step)."""
    root = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        if m and os.path.exists(os.path.join(root, name, "meta.json")):
            found.append(((int(m[1]), int(m[2])), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


def problem(path: str) -> str | None:
    """Why the checkpoint at ``path`` cannot be read (its meta.json, or a damaged state.npz), or None."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        int(meta["stage"]), int(meta["step"])
        with zipfile.ZipFile(os.path.join(path, "state.npz")) as archive:
            bad = archive.testzip()  # reads every array and checks its CRC
        if bad is not None:
            return f"state.npz: {bad} is damaged"
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        return f"{type(error).__name__}: {error}"
    return None


def remove_partial(workdir: str) -> list[str]:
    """Deletes the ``.tmp-*`` folders that writes killed mid-way left in ``workdir``'s checkpoints."""
    root = os.path.join(workdir, "checkpoints")
    stale = (
        [os.path.join(root, n) for n in os.listdir(root) if n.startswith(".tmp-")]
        if os.path.isdir(root)
        else []
    )
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def latest(workdir: str) -> str | None:
    found = list_checkpoints(workdir)
    return found[-1] if found else None


def load(path: str, like):
    """Reads a checkpoint into a pytree shaped like ``like``. Returns ``(state, meta)``."""
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    leaves, treedef = jax.tree.flatten(like)
    with np.load(os.path.join(path, "state.npz")) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(arrays) != len(leaves):
        raise ValueError(
            f"checkpoint {path} holds {len(arrays)} arrays but this model's train state has {len(leaves)}: "
            "was it written with another config or training stage?"
        )
    for i, (a, ref) in enumerate(zip(arrays, leaves, strict=True)):
        if tuple(a.shape) != tuple(np.shape(ref)):
            raise ValueError(
                f"checkpoint {path}: array {i} has shape {a.shape}, this model expects {np.shape(ref)}"
            )
    arrays = [np.asarray(a, dtype=np.asarray(ref).dtype) for a, ref in zip(arrays, leaves, strict=True)]
    return jax.tree.unflatten(treedef, arrays), meta
