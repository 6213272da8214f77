"""Writing p3m's Ikomia plugin into Ikomia's plugin folder, and removing it.

Ikomia (0.16) loads a Python plugin from ``<plugins>/Python/<name>/`` when that
folder holds ``<name>.py`` (with an ``IkomiaPlugin`` class) and
``<name>_process.py``; the Studio also needs ``<name>_widget.py``, the API does
not. ``<plugins>`` is Ikomia's ``registry.path`` from its ``core/config.yaml``,
else ``<root_folder>/Plugins``, with ``root_folder`` defaulting to ``~/Ikomia``.
p3m reads that file instead of importing ``ikomia``, whose import writes a log
and regenerates its ``ik`` module.

The plugin files (``plugin/`` in this package) only import the task from p3m,
so upgrading p3m upgrades the task. A marker file lists what p3m wrote, with
sha256 digests: uninstalling removes those files only, and only while unchanged.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import yaml

from p3m import __version__
from p3m.io import atomic_write, write_text

PLUGIN_NAME = "infer_p3m_portrait_matting"
MARKER = "p3m-plugin.json"
_BACKUP_PREFIX = f"{PLUGIN_NAME}.replaced-by-p3m-"


class PluginConflictError(RuntimeError):
    """The plugin folder holds something p3m did not install; nothing was changed."""


@dataclass(frozen=True)
class InstallReport:
    folder: Path
    updated: bool  # a plugin p3m installed earlier was replaced
    moved_aside: Path | None  # where a plugin p3m did not install was moved (force)


@dataclass(frozen=True)
class UninstallReport:
    folder: Path
    removed: tuple[Path, ...]
    kept: tuple[Path, ...]  # files p3m wrote that were changed since, or files it did not write
    restored: Path | None  # the plugin moved aside at install, back in place
    still_aside: Path | None  # that plugin, left aside because files remain in the folder


def ikomia_plugins_dir() -> Path:
    """Ikomia's plugin folder (``<plugins>``), resolved as Ikomia resolves it."""
    config = _ikomia_config()
    registry = (config.get("registry") or {}).get("path")
    if registry:
        return Path(registry).expanduser()
    root = config.get("root_folder") or os.path.join(os.path.expanduser("~"), "Ikomia")
    return Path(root).expanduser() / "Plugins"


def plugin_folder(plugins_dir: os.PathLike | None = None) -> Path:
    return Path(plugins_dir or ikomia_plugins_dir()) / "Python" / PLUGIN_NAME


def ikomia_installed() -> bool:
    return importlib.util.find_spec("ikomia") is not None


def install(plugins_dir: os.PathLike | None = None, force: bool = False) -> InstallReport:
    """Write the plugin; a plugin p3m did not install is refused, or moved aside with ``force``.

    Raises:
        PluginConflictError: the folder holds another plugin and ``force`` is false.
        p3m.io.UnsafeOutputError: a link below Ikomia's ``Python`` plugin folder would be written through.
    """
    folder = plugin_folder(plugins_dir)
    previous = _read_marker(folder)
    moved_aside = None
    if previous is None and (folder.is_symlink() or folder.exists() and (not folder.is_dir() or any(folder.iterdir()))):
        if not force:
            raise PluginConflictError(f"{folder} holds a plugin p3m did not install (Ikomia HUB's?); "
                                      f"use --force to move it aside (uninstall puts it back)")
        moved_aside = folder.with_name(_BACKUP_PREFIX + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ"))
        os.replace(folder, moved_aside)
    files = _template_files()
    for name, content in files.items():
        atomic_write(folder / name, lambda tmp, content=content: tmp.write_bytes(content), root=folder.parent)
    if previous:
        for name, digest in previous["files"].items():
            if name not in files and _digest_matches(folder / name, digest):
                (folder / name).unlink()
    marker = {
        "p3m_version": __version__,
        "files": {name: hashlib.sha256(content).hexdigest() for name, content in files.items()},
        "moved_aside": moved_aside.name if moved_aside else (previous or {}).get("moved_aside"),
    }
    write_text(folder / MARKER, json.dumps(marker, indent=2) + "\n", root=folder.parent)
    return InstallReport(folder=folder, updated=previous is not None, moved_aside=moved_aside)


def uninstall(plugins_dir: os.PathLike | None = None) -> UninstallReport:
    """Remove the files p3m installed (unchanged ones) and put back a plugin moved aside by ``install``.

    Raises:
        FileNotFoundError: no plugin folder.
        PluginConflictError: the folder is not p3m's (no valid marker); nothing was changed.
    """
    folder = plugin_folder(plugins_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such plugin folder; nothing to uninstall")
    marker = _read_marker(folder)
    if marker is None:
        raise PluginConflictError(f"{folder} was not installed by p3m (no valid {MARKER}); left untouched")
    removed = []
    for name, digest in marker["files"].items():
        if _digest_matches(folder / name, digest):
            (folder / name).unlink()
            removed.append(folder / name)
    removed += _remove_bytecode(folder, [Path(name).stem for name in marker["files"]])
    (folder / MARKER).unlink()
    removed.append(folder / MARKER)
    kept = sorted(path for path in folder.rglob("*") if not path.is_dir())
    if not any(folder.iterdir()):
        folder.rmdir()
    restored = still_aside = None
    backup = folder.with_name(marker["moved_aside"]) if marker["moved_aside"] else None
    if backup is not None and backup.is_dir():
        if folder.exists():
            still_aside = backup
        else:
            os.replace(backup, folder)
            restored = folder
    return UninstallReport(folder=folder, removed=tuple(removed), kept=tuple(kept), restored=restored,
                           still_aside=still_aside)


def _ikomia_config() -> dict:
    """Ikomia's ``core/config.yaml`` (found without importing ``ikomia``); empty when absent or unreadable."""
    spec = importlib.util.find_spec("ikomia")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "core" / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _template_files() -> dict[str, bytes]:
    template = resources.files("p3m.integrations.ikomia") / "plugin"
    return {entry.name: entry.read_bytes() for entry in sorted(template.iterdir(), key=lambda entry: entry.name)
            if entry.name.endswith(".py")}


def _read_marker(folder: Path) -> dict | None:
    """The marker's content when it is p3m's and well formed, else None (the folder is not p3m's)."""
    path = folder / MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return None
    files = marker["files"]
    if not all(_plain_name(name) and isinstance(digest, str) for name, digest in files.items()):
        return None
    moved_aside = marker.get("moved_aside")
    if moved_aside is not None and not (isinstance(moved_aside, str) and _plain_name(moved_aside)
                                        and moved_aside.startswith(_BACKUP_PREFIX)):
        return None
    return {"files": files, "moved_aside": moved_aside}


def _plain_name(name: object) -> bool:
    """A file name inside the folder: no separators, not ``.``/``..``, not the marker."""
    return isinstance(name, str) and name not in ("", ".", "..", MARKER) and "/" not in name and "\\" not in name


def _digest_matches(path: Path, digest: str) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _remove_bytecode(folder: Path, stems: list[str]) -> list[Path]:
    """Python's cached bytecode of the plugin's modules (written when Ikomia imported them)."""
    cache = folder / "__pycache__"
    if not cache.is_dir() or cache.is_symlink():
        return []
    removed = []
    for path in sorted(cache.iterdir()):
        if path.is_file() and path.suffix == ".pyc" and path.name.split(".")[0] in stems:
            path.unlink()
            removed.append(path)
    if not any(cache.iterdir()):
        cache.rmdir()
    return removed
