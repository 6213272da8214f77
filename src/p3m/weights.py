"""The official pretrained weights: cache location, download and verification.

Two kinds of entries, named after the model: ``resnet34`` / ``vitae-s``, the
P3M-Net weights trained on P3M-10k, and ``resnet34-imagenet`` /
``vitae-s-imagenet``, the ImageNet encoder weights the official training starts
from (``p3m train``'s default initialisation). Files live in ``$P3M_HOME/weights`` (default ``$XDG_CACHE_HOME/p3m`` or
``~/.cache/p3m``). A download goes to a temporary file beside the final one,
is checked (recorded size/sha256 where known, and a strict load into the
model), and only then renamed, so no half file is ever left under the final
name.
"""
from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from p3m.models.registry import ModelSpec, PretrainedWeights, get_spec, list_models

DOWNLOAD_TIMEOUT_S = 30
IMAGENET_SUFFIX = "-imagenet"


class WeightsUnavailableError(RuntimeError):
    """The weights are neither cached nor downloadable; the message says what to do."""


def home() -> Path:
    if os.environ.get("P3M_HOME"):
        return Path(os.environ["P3M_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "p3m"


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable file: a model's P3M-Net weights, or (``encoder_only``) its ImageNet encoder."""

    name: str
    spec: ModelSpec
    weights: PretrainedWeights
    encoder_only: bool

    @property
    def option(self) -> str:
        """The command-line option that takes such a file instead."""
        return "--backbone-weights" if self.encoder_only else "--weights"


def entry(name: str) -> WeightsEntry:
    """The entry ``name`` (``resnet34``, ``resnet34-imagenet``, ...).

    Raises:
        KeyError: unknown model; WeightsUnavailableError: nothing published for it.
    """
    encoder_only = name.lower().endswith(IMAGENET_SUFFIX)
    spec = get_spec(name[:-len(IMAGENET_SUFFIX)] if encoder_only else name)
    weights = spec.imagenet_weights if encoder_only else spec.weights
    label = f"{spec.name}{IMAGENET_SUFFIX}" if encoder_only else spec.name
    if weights is None:
        what = "ImageNet encoder weights" if encoder_only else "weights"
        option = "--backbone-weights" if encoder_only else "--weights"
        raise WeightsUnavailableError(f"model '{spec.name}' has no published {what}; pass a file with {option}")
    return WeightsEntry(label, spec, weights, encoder_only)


def entry_names() -> list[str]:
    """Every downloadable entry, P3M-Net weights first, then ImageNet encoders."""
    names = []
    for model in list_models():
        spec = get_spec(model)
        names += [model] if spec.weights else []
        names += [model + IMAGENET_SUFFIX] if spec.imagenet_weights else []
    return names


def cached_path(name: str) -> Path:
    """Where the file of entry ``name`` (see :func:`entry`) is (or would be) cached."""
    return home() / "weights" / entry(name).weights.file_name


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, name: str) -> None:
    """Check a weights file: recorded size and sha256 where known, then a strict load
    (for an ImageNet encoder: every learnable encoder tensor present with its shape).

    Raises:
        p3m.checkpoint.CheckpointError, p3m.backbone.BackboneError or WeightsUnavailableError on any mismatch.
    """
    from p3m.checkpoint import load_weights

    found = entry(name)
    known = found.weights
    if known.size is not None and path.stat().st_size != known.size:
        raise WeightsUnavailableError(f"{path}: size {path.stat().st_size} bytes, expected {known.size}")
    if known.sha256 is not None and sha256_of(path) != known.sha256:
        raise WeightsUnavailableError(f"{path}: sha256 does not match the published file")
    if found.encoder_only:
        from p3m.backbone import BackboneError, load_backbone

        report = load_backbone(found.spec.build(), path)
        if not report.complete:
            raise BackboneError(f"{path}: not the {found.spec.name} ImageNet encoder: "
                                f"{report.summary().splitlines()[1].strip()}")
    else:
        load_weights(found.spec.build(), path, found.spec.name)


def download(name: str, force: bool = False, quiet: bool = False) -> Path:
    """Download the file of entry ``name`` into the cache (progress bar on stderr).

    Returns the cached path. Raises WeightsUnavailableError with the URL, the cache
    path and the ``--weights`` / ``--backbone-weights`` alternative when the download fails.
    """
    import gdown

    found = entry(name)
    target = cached_path(name)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    quiet = quiet or not sys.stderr.isatty()
    try:
        file_id = found.weights.google_drive_id
        if found.weights.in_folder:
            file_id = _file_in_folder(found.weights, quiet)
        gdown.download(id=file_id, output=str(partial), quiet=quiet, timeout=DOWNLOAD_TIMEOUT_S)
        if not partial.is_file():
            raise OSError("the server sent no file")
        verify(partial, found.name)
        os.replace(partial, target)
    except Exception as error:  # noqa: BLE001 - every failure becomes the same actionable message
        raise WeightsUnavailableError(_unavailable_message(found.name, _reason(error))) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _file_in_folder(weights: PretrainedWeights, quiet: bool) -> str:
    """The Google Drive id of ``weights.file_name`` in the shared folder ``weights.google_drive_id``."""
    import gdown

    listed = gdown.download_folder(id=weights.google_drive_id, skip_download=True, quiet=quiet)
    for item in listed or []:
        if Path(item.path).name == weights.file_name:
            return item.id
    names = ", ".join(sorted(Path(item.path).name for item in listed or [])) or "nothing"
    raise OSError(f"the folder holds no {weights.file_name} (found {names})")


def _reason(error: Exception) -> str:
    import requests

    if isinstance(error, requests.Timeout):
        return f"no answer from Google Drive within {DOWNLOAD_TIMEOUT_S} s"
    if isinstance(error, requests.ConnectionError):
        return "cannot reach Google Drive: no network connection?"
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _unavailable_message(name: str, reason: str) -> str:
    found = entry(name)
    alternative = "--backbone-weights PATH" if found.encoder_only else "--weights / Matter(weights=...)"
    return (
        f"cannot download the '{found.name}' weights ({reason}). Download {found.weights.url} "
        f"({found.weights.file_name}) by hand and either put it at {cached_path(found.name)} "
        f"or pass its path with {alternative}"
    )


def resolve(model_name: str, weights: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The weights file to load: ``weights`` if given, else the cache, else a download.
    ``model_name`` is an entry name (``resnet34``, ``resnet34-imagenet``, ...)."""
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
