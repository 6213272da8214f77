"""The official pretrained weights: cache location, download and verification.

Files live in ``$P3M_HOME/weights`` (default ``$XDG_CACHE_HOME/p3m`` or
``~/.cache/p3m``). A download goes to a temporary file beside the final one,
is checked (recorded size/sha256 where known, and a strict load into the
model), and only then renamed, so no half file is ever left under the final
name.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from p3m.models.registry import get_spec

DOWNLOAD_TIMEOUT_S = 30


class WeightsUnavailableError(RuntimeError):
    """The weights are neither cached nor downloadable; the message says what to do."""


def home() -> Path:
    if os.environ.get("P3M_HOME"):
        return Path(os.environ["P3M_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "p3m"


def cached_path(model_name: str) -> Path:
    """Where the official weights of ``model_name`` are (or would be) cached."""
    spec = get_spec(model_name)
    if spec.weights is None:
        raise WeightsUnavailableError(f"model '{spec.name}' has no published weights; pass a file with --weights")
    return home() / "weights" / spec.weights.file_name


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, model_name: str) -> None:
    """Check a weights file: recorded size and sha256 where known, then a strict load.

    Raises:
        p3m.checkpoint.CheckpointError or WeightsUnavailableError on any mismatch.
    """
    from p3m.checkpoint import load_weights

    spec = get_spec(model_name)
    known = spec.weights
    if known and known.size is not None and path.stat().st_size != known.size:
        raise WeightsUnavailableError(f"{path}: size {path.stat().st_size} bytes, expected {known.size}")
    if known and known.sha256 is not None and sha256_of(path) != known.sha256:
        raise WeightsUnavailableError(f"{path}: sha256 does not match the published file")
    load_weights(spec.build(), path, spec.name)


def download(model_name: str, force: bool = False, quiet: bool = False) -> Path:
    """Download the official weights of ``model_name`` into the cache (progress bar on stderr).

    Returns the cached path. Raises WeightsUnavailableError with the URL, the cache
    path and the ``--weights`` alternative when the download fails.
    """
    import gdown

    target = cached_path(model_name)
    if target.exists() and not force:
        return target
    spec = get_spec(model_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        gdown.download(id=spec.weights.google_drive_id, output=str(partial), quiet=quiet or not sys.stderr.isatty(),
                       timeout=DOWNLOAD_TIMEOUT_S)
        if not partial.is_file():
            raise OSError("the server sent no file")
        verify(partial, spec.name)
        os.replace(partial, target)
    except Exception as error:  # noqa: BLE001 - every failure becomes the same actionable message
        raise WeightsUnavailableError(_unavailable_message(spec.name, _reason(error))) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _reason(error: Exception) -> str:
    import requests

    if isinstance(error, requests.Timeout):
        return f"no answer from Google Drive within {DOWNLOAD_TIMEOUT_S} s"
    if isinstance(error, requests.ConnectionError):
        return "cannot reach Google Drive: no network connection?"
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _unavailable_message(model_name: str, reason: str) -> str:
    spec = get_spec(model_name)
    return (
        f"cannot download the '{spec.name}' weights ({reason}). Download {spec.weights.url} "
        f"({spec.weights.file_name}) by hand and either put it at {cached_path(spec.name)} "
        f"or pass its path with --weights / Matter(weights=...)"
    )


def resolve(model_name: str, weights: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The weights file to load: ``weights`` if given, else the cache, else a download."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{path}: no such weights file")
        return path
    cached = cached_path(model_name)
    if cached.is_file():
        return cached
    if not allow_download:
        raise WeightsUnavailableError(_unavailable_message(model_name, "not cached and downloads are off"))
    return download(model_name)
