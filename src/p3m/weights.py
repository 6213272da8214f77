"""Pretrained weight files: cache location, download, and verification on every use.

Files live in ``$P3M_HOME/weights`` (default ``$XDG_CACHE_HOME/p3m`` or
``~/.cache/p3m``). The machinery works on any registry entry
(:class:`~p3m.models.registry.PretrainedWeights`) with a ``check`` that proves
a file is what it claims (for P3M-Net weights, a strict load into the model).

* A download goes through the one writer: checked (published size and
  sha256 where known, then ``check``) before it is renamed into place.
* Once a file passes, its size and sha256 are recorded beside it
  (``<file>.verified.json``); every later use hashes the file again and
  refuses it when it no longer matches (:class:`WeightsCorruptError`, with
  ``p3m weights download --force`` as the remedy).
* A file put into the cache by hand is checked on its first use and then
  recorded the same way.
* gdown's cookies are kept in ``$P3M_HOME/gdown-cookies.txt`` (or not kept at
  all with gdown releases that cannot be told where).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from p3m.models.registry import PretrainedWeights, get_spec

DOWNLOAD_TIMEOUT_S = 30
VERIFIED, CORRUPT, MISSING = "verified", "corrupt", "missing"
Check = Callable[[Path], None]


class WeightsUnavailableError(RuntimeError):
    """The weights are neither cached nor downloadable; the message says what to do."""


class WeightsCorruptError(WeightsUnavailableError):
    """A cached file no longer matches what was verified (or never passed its check)."""


def home() -> Path:
    if os.environ.get("P3M_HOME"):
        return Path(os.environ["P3M_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "p3m"


def cache_folder() -> Path:
    return home() / "weights"


def cached_file(entry: PretrainedWeights) -> Path:
    return cache_folder() / entry.file_name


def record_path(path: Path) -> Path:
    """The verification record kept beside a cached file."""
    return path.with_name(path.name + ".verified.json")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_published(path: Path, entry: PretrainedWeights) -> tuple[int, str]:
    """(size, sha256) of ``path``, refused when they differ from the published ones."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise WeightsCorruptError(f"{path}: size {size} bytes, the published file has {entry.size}")
    digest = sha256_of(path)
    if entry.sha256 is not None and digest != entry.sha256:
        raise WeightsCorruptError(f"{path}: sha256 differs from the published file's")
    return size, digest


def _read_record(path: Path) -> Optional[dict]:
    try:
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(path: Path, size: int, digest: str) -> None:
    from p3m.io import write_text

    write_text(record_path(path), json.dumps({"file": path.name, "size": size, "sha256": digest}) + "\n",
               root=path.parent)


def file_status(entry: PretrainedWeights, check: Check) -> tuple[str, str]:
    """(``verified`` | ``corrupt`` | ``missing``, a reason for ``corrupt``) of a cached file.

    A cached file without a record is checked now and recorded if it passes.
    """
    try:
        ensure_verified(entry, check)
    except WeightsCorruptError as error:
        return CORRUPT, str(error)
    except FileNotFoundError:
        return MISSING, ""
    return VERIFIED, ""


def ensure_verified(entry: PretrainedWeights, check: Check) -> Path:
    """The cached file of ``entry``, after checking it against its record (or checking and recording it).

    Raises:
        FileNotFoundError: not cached.
        WeightsCorruptError: it differs from the record, or fails its check.
    """
    path = cached_file(entry)
    if not path.is_file():
        raise FileNotFoundError(path)
    remedy = f"; replace it with `p3m weights download --force` or delete it"
    try:
        size, digest = _check_published(path, entry)
    except WeightsCorruptError as error:
        raise WeightsCorruptError(f"{error}{remedy}") from None
    record = _read_record(path)
    if record is not None:
        if record.get("size") != size or record.get("sha256") != digest:
            raise WeightsCorruptError(f"{path}: changed since it was verified (size or sha256 differ from "
                                      f"{record_path(path).name}){remedy}")
        return path
    try:
        check(path)
    except (ValueError, WeightsUnavailableError) as error:
        raise WeightsCorruptError(f"{str(error).rstrip('.')}{remedy}") from None
    _write_record(path, size, digest)
    return path


def _gdown_options() -> dict:
    """Keep gdown's cookies inside P3M_HOME: gdown otherwise keeps them in ~/.cache/gdown."""
    import gdown

    if "cookies_file" in inspect.signature(gdown.download).parameters:
        return {"cookies_file": str(home() / "gdown-cookies.txt")}
    return {"use_cookies": False}


def download_file(entry: PretrainedWeights, check: Check, force: bool = False, quiet: bool = False,
                  what: str = "") -> Path:
    """Download ``entry`` into the cache unless a verified copy is there; returns the cached path.

    ``force`` downloads again even over a verified file (a corrupt one is always replaced).
    Raises WeightsUnavailableError with the URL, the cache path and the alternative when it fails.
    """
    import gdown

    from p3m.io import OutputFolder

    target = cached_file(entry)
    if not force:
        try:
            return ensure_verified(entry, check)
        except (FileNotFoundError, WeightsCorruptError):
            pass
    folder = OutputFolder(cache_folder())
    sizes: dict[str, tuple[int, str]] = {}

    def fetch(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            gdown.download(id=entry.google_drive_id, output=handle, quiet=quiet or not sys.stderr.isatty(),
                           timeout=DOWNLOAD_TIMEOUT_S, **_gdown_options())
        if tmp.stat().st_size == 0:
            raise OSError("the server sent no file")
        sizes["file"] = _check_published(tmp, entry)
        check(tmp)

    try:
        record_path(target).unlink(missing_ok=True)
        folder.write(target, fetch)
        _write_record(target, *sizes["file"])
    except Exception as error:  # noqa: BLE001 - every failure becomes the same actionable message
        raise WeightsUnavailableError(_unavailable_message(entry, _reason(error), what)) from None
    return target


def _reason(error: Exception) -> str:
    import requests

    if isinstance(error, requests.Timeout):
        return f"no answer from Google Drive within {DOWNLOAD_TIMEOUT_S} s"
    if isinstance(error, requests.ConnectionError):
        return "cannot reach Google Drive: no network connection?"
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _unavailable_message(entry: PretrainedWeights, reason: str, what: str = "") -> str:
    return (
        f"cannot download {what or entry.file_name} ({reason}). Download {entry.url} "
        f"({entry.file_name}) by hand and either put it at {cached_file(entry)} "
        f"or pass its path with --weights / Matter(weights=...)"
    )


# -- P3M-Net weights by model name

def _entry(model_name: str) -> PretrainedWeights:
    spec = get_spec(model_name)
    if spec.weights is None:
        raise WeightsUnavailableError(f"model '{spec.name}' has no published weights; pass a file with --weights")
    return spec.weights


def _model_check(model_name: str) -> Check:
    def check(path: Path) -> None:
        from p3m.checkpoint import load_weights

        spec = get_spec(model_name)
        load_weights(spec.build(), path, spec.name)
    return check


def cached_path(model_name: str) -> Path:
    """Where the official weights of ``model_name`` are (or would be) cached."""
    return cached_file(_entry(model_name))


def verify(path: Path, model_name: str) -> None:
    """Check a weights file: published size and sha256 where known, then a strict load.

    Raises:
        p3m.checkpoint.CheckpointError or WeightsUnavailableError on any mismatch.
    """
    _check_published(path, _entry(model_name))
    _model_check(model_name)(path)


def status(model_name: str) -> tuple[str, str]:
    """(``verified`` | ``corrupt`` | ``missing``, reason) of the cached official weights."""
    return file_status(_entry(model_name), _model_check(model_name))


def download(model_name: str, force: bool = False, quiet: bool = False) -> Path:
    """Download the official weights of ``model_name`` into the cache (progress bar on stderr)."""
    spec = get_spec(model_name)
    return download_file(_entry(spec.name), _model_check(spec.name), force, quiet, f"the '{spec.name}' weights")


def resolve(model_name: str, weights: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The weights file to load: ``weights`` if given, else the verified cache, else a download.

    Raises:
        WeightsCorruptError: the cached file fails verification.
        WeightsUnavailableError: not cached and the download is off or fails.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{path}: no such weights file")
        return path
    entry = _entry(model_name)
    try:
        return ensure_verified(entry, _model_check(model_name))
    except FileNotFoundError:
        pass
    if not allow_download:
        raise WeightsUnavailableError(_unavailable_message(entry, "not cached and downloads are off",
                                                           f"the '{get_spec(model_name).name}' weights"))
    return download(model_name)
