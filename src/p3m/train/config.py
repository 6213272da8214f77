"""Training configuration: one dataclass, read from YAML, overridden from the command line.

Precedence: the defaults below (the papers' schedule, also shipped as
``p3m/configs/p3m10k_resnet34.yaml``) < ``--config FILE.yaml`` < command-line
flags < ``--set key=value``. The resolved configuration is saved with the run.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

PRECISIONS = ("fp32", "bf16", "fp16")
# ``backbone_weights`` values besides a file: the registry's ImageNet encoder, or random initialisation.
IMAGENET = "imagenet"
RANDOM_INIT = "none"
LR_SCHEDULES = ("constant", "cosine")
VAL_SPLITS = ("P3M-500-P", "P3M-500-NP")
CP_MODES = ("icp", "fcp", "both")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "p3m10k_resnet34.yaml"


class ConfigError(ValueError):
    """An invalid configuration value or file; the message names the key."""


@dataclass
class TrainConfig:
    """Every setting of a training run (see the shipped YAML for descriptions)."""

    # data
    data: str | None = None
    image_size: int = 512
    crop_sizes: list[int] = field(default_factory=lambda: [512, 768, 1024])
    trimap_kernel: list[int] = field(default_factory=lambda: [15, 30])
    composition: str = "auto"
    workers: int = 4
    # P3M-CP (IJCV 2023): public faces pasted into the face-blurred region, image and/or feature level
    p3m_cp: str | None = None
    cp_faces: str | None = None
    cp_prob_icp: float = 0.5
    cp_prob_fcp: float = 0.5
    # model and initialisation
    model: str = "resnet34"
    backbone_weights: str = IMAGENET
    weights: str | None = None
    # optimisation
    epochs: float = 150
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0
    precision: str = "fp32"
    sync_bn: bool = False
    find_unused_parameters: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    # output
    output: str | None = None
    log_every: int = 10
    checkpoint_every: int = 1000
    # validation
    validate_every: int = 5000
    val_splits: list[str] = field(default_factory=lambda: list(VAL_SPLITS))
    val_max_images: int = 0
    val_method: str = "resize"
    val_max_size: int = 1600
    val_fast: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Check ranges and choices; returns self. Raises :class:`ConfigError`."""
        def need(condition: bool, key: str, message: str) -> None:
            if not condition:
                raise ConfigError(f"{key}: {message}, got {getattr(self, key)!r}")

        need(self.image_size >= 32 and self.image_size % 32 == 0, "image_size", "must be a positive multiple of 32")
        need(len(self.crop_sizes) > 0 and all(side >= 1 for side in self.crop_sizes), "crop_sizes",
             "must be a non-empty list of positive sides")
        need(len(self.trimap_kernel) == 2 and 1 <= self.trimap_kernel[0] <= self.trimap_kernel[1],
             "trimap_kernel", "must be [low, high] with 1 <= low <= high")
        need(self.composition in ("auto", "on", "off"), "composition", "must be auto, on or off")
        need(self.workers >= 0, "workers", "must be >= 0")
        need(self.p3m_cp is None or self.p3m_cp in CP_MODES, "p3m_cp", f"must be one of {', '.join(CP_MODES)} (or null)")
        need(self.p3m_cp is None or bool(self.cp_faces), "cp_faces",
             f"P3M-CP ({self.p3m_cp}) needs a folder of public face images (--cp-faces DIR)")
        need(0 <= self.cp_prob_icp <= 1, "cp_prob_icp", "must be a probability in [0, 1]")
        need(0 <= self.cp_prob_fcp <= 1, "cp_prob_fcp", "must be a probability in [0, 1]")
        need(self.epochs > 0, "epochs", "must be > 0")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1 (or null for epochs)")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(len(self.betas) == 2 and all(0 <= beta < 1 for beta in self.betas), "betas", "must be two values in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        need(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: only at the end)")
        need(self.validate_every >= 0, "validate_every", "must be >= 0 (0: never)")
        need(all(split in VAL_SPLITS for split in self.val_splits), "val_splits",
             f"must list splits among {', '.join(VAL_SPLITS)}")
        need(self.val_max_images >= 0, "val_max_images", "must be >= 0 (0: every image)")
        need(self.val_method in ("resize", "hybrid"), "val_method", "must be resize or hybrid")
        need(self.val_max_size >= 32, "val_max_size", "must be >= 32")
        self._validate_model()
        need(_valid_device(self.device), "device", "must be auto, cpu, cuda, cuda:N or mps")
        return self

    def _validate_model(self) -> None:
        from p3m.models.registry import get_spec

        try:
            get_spec(self.model)
        except KeyError as error:
            raise ConfigError(f"model: {error.args[0]}") from None


def _valid_device(name: str) -> bool:
    """``auto`` or a torch device of a kind training runs on (availability is checked when the run starts)."""
    if name == "auto":
        return True
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return False
    return device.type in ("cpu", "cuda", "mps") and (device.type == "cuda" or device.index in (None, 0))


_FIELDS = {item.name: item for item in fields(TrainConfig)}


def _coerce(key: str, value: Any) -> Any:
    """Check a value's type against the field's annotation (ints accepted for floats)."""
    annotation = str(_FIELDS[key].type)
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{key}: may not be null")
    if annotation.startswith("list["):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = annotation[5:-1]
        return [_scalar(key, item, inner) for item in value]
    return _scalar(key, value, annotation.replace(" | None", ""))


def _scalar(key: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        if isinstance(value, (str, os.PathLike)):
            return str(value)
    raise ConfigError(f"{key}: expected {kind}, got {value!r}")


def merge(config: TrainConfig, values: Mapping[str, Any], origin: str) -> TrainConfig:
    """A copy of ``config`` with ``values`` applied. Unknown keys raise :class:`ConfigError` naming ``origin``."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    updated = {key: _coerce(key, value) for key, value in values.items()}
    return dataclasses.replace(config, **updated)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(content).__name__}")
    return content


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values parsed as YAML (``lr=2e-5``, ``val_splits=[P3M-500-NP]``)."""
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            values[key.strip().replace("-", "_")] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
    return values


def save_yaml(config: TrainConfig, path: str | os.PathLike) -> Path:
    from p3m.io import write_text

    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return write_text(path, text, root=Path(path).parent)
