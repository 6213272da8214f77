"""What a run was made from, kept in ``DIR/provenance.json`` and in every checkpoint.

The record holds the resolved configuration, the versions of p3m (and a digest
of its code), torch, NumPy and Python, the device and thread count, the initial
weights (path and sha256) and a digest of the training files; the JSON file
also lists every training file (name relative to the dataset root, size,
sha256). Resuming compares the checkpoint's record with the present one:
a changed training set or configuration is refused unless forced, other
changes are reported.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from p3m.weights import sha256_of

PROVENANCE = "provenance.json"

# Settings a resumed run may change: where the data and the P3M-CP faces are (their files are compared), how long
# to train, where to log and what to validate, not what a step computes.
RESUMABLE_KEYS = frozenset({
    "data", "cp_faces", "max_steps", "epochs", "output", "workers", "device", "log_every", "checkpoint_every",
    "validate_every", "val_splits", "val_max_images", "val_method", "val_max_size", "val_fast",
})


def file_manifest(root: str | Path, paths: Iterable[Path]) -> list[dict[str, Any]]:
    """``[{"name", "size", "sha256"}]`` of ``paths``, names relative to ``root`` (POSIX), sorted."""
    root = Path(root)
    rows = []
    for path in sorted(set(paths)):
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.as_posix()
        rows.append({"name": name, "size": path.stat().st_size, "sha256": sha256_of(path)})
    return sorted(rows, key=lambda row: row["name"])


def manifest_digest(manifest: list[dict[str, Any]]) -> str:
    """One sha256 over the manifest's names, sizes and hashes."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def code_digest() -> str:
    """sha256 over the p3m package's Python sources (relative path and content of each)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_record(config: dict[str, Any], manifest: list[dict[str, Any]], initial_weights: dict[str, Any],
                 device: str, threads: int, world_size: int) -> dict[str, Any]:
    """The provenance of a run as it starts (or resumes) now; small enough for every checkpoint."""
    import numpy
    import torch

    import p3m

    return {
        "p3m": p3m.__version__, "code_sha256": code_digest(), "torch": str(torch.__version__),
        "numpy": numpy.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "torch_threads": threads, "world_size": world_size,
        "config": config, "initial_weights": initial_weights,
        "data": {"files": len(manifest), "sha256": manifest_digest(manifest)},
    }


def compare(saved: dict[str, Any], current: dict[str, Any], saved_manifest: list[dict[str, Any]] | None,
            manifest: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Differences between a checkpoint's record and the present run.

    Returns ``(blocking, notes)``: changes to the training files or to the settings
    of a step (resuming would not continue the same run), and other changes
    (versions, code, device, threads) after which the run continues but is no longer
    bit for bit the uninterrupted one.
    """
    blocking = []
    if saved["data"]["sha256"] != current["data"]["sha256"]:
        blocking.append("training files changed: " + _data_changes(saved_manifest, manifest, saved["data"]))
    old_config, new_config = saved["config"], current["config"]
    changed = sorted(key for key in set(old_config) | set(new_config)
                     if key not in RESUMABLE_KEYS and old_config.get(key) != new_config.get(key))
    if changed:
        blocking.append("settings changed: " + ", ".join(
            f"{key} {old_config.get(key)!r} -> {new_config.get(key)!r}" for key in changed))
    notes = [f"{label} {saved.get(key)} -> {current.get(key)}"
             for key, label in (("p3m", "p3m"), ("torch", "torch"), ("numpy", "NumPy"), ("python", "Python"),
                                ("device", "device"), ("torch_threads", "torch threads"),
                                ("world_size", "processes"))
             if saved.get(key) != current.get(key)]
    if saved.get("code_sha256") != current.get("code_sha256"):
        notes.append("p3m code changed (its sources' sha256 differs)")
    return blocking, notes


def _data_changes(saved_manifest: list[dict[str, Any]] | None, manifest: list[dict[str, Any]],
                  saved_data: dict[str, Any]) -> str:
    if saved_manifest is None or manifest_digest(saved_manifest) != saved_data["sha256"]:
        return f"{saved_data['files']} file(s) then, {len(manifest)} now; their digest differs"
    old = {row["name"]: row for row in saved_manifest}
    new = {row["name"]: row for row in manifest}
    parts = []
    for label, names in (("changed", [name for name in new if name in old and new[name] != old[name]]),
                         ("added", [name for name in new if name not in old]),
                         ("removed", [name for name in old if name not in new])):
        if names:
            shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} {label} ({shown})")
    return "; ".join(parts)


def read(output: Path) -> dict[str, Any] | None:
    """The run folder's provenance file, or None when absent or unreadable."""
    try:
        content = json.loads((output / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def write(output: Path, record: dict[str, Any], manifest: list[dict[str, Any]],
          history: list[dict[str, Any]]) -> Path:
    """Write ``DIR/provenance.json``: the record, the resumes so far and the file manifest."""
    from p3m.io import write_text

    text = json.dumps({**record, "history": history, "manifest": manifest}, indent=1) + "\n"
    return write_text(output / PROVENANCE, text, root=output)


def history_entry(step: int, kind: str, differences: list[str], forced: bool) -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step, "event": kind,
            "differences": differences, "forced": forced, "command": sys.argv[1:]}
