"""Building a training run from its configuration: what ``p3m train`` calls.

In order, and before anything is written: the checkpoint to resume is read,
the initial weights are found (the ImageNet encoder is downloaded once into the
weights cache), the training files are found and hashed, and a resumed run's
provenance is compared with the present one. Only then is the run folder
written: ``config.yaml``, ``provenance.json``, ``train.log``, and the loop starts.
"""
from __future__ import annotations

import contextlib
import functools
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from p3m.checkpoint import load_weights, read_checkpoint
from p3m.io import OutputFolder
from p3m.models.registry import ModelSpec, get_spec
from p3m.train import distributed, provenance
from p3m.train.config import IMAGENET, RANDOM_INIT, TrainConfig, save_yaml
from p3m.train.copy_paste import CopyPaste, FaceSource
from p3m.train.dataset import P3MTrainDataset, TrainSampler, epochs_to_steps, worker_init
from p3m.train.distributed import DistInfo
from p3m.train.logs import LOG, TEXT_LOG, VAL_LOG, LogHook, run_logger, truncate_jsonl, warnings_to_log
from p3m.train.state import data_generator, deterministic_mode, seed_everything
from p3m.train.trainer import CONFIG, CheckpointHook, Trainer, TrainingError, lr_factor


@dataclass
class TrainResult:
    """How a run ended."""

    output: Path
    step: int
    total_steps: int
    interrupted: bool


def train(config: TrainConfig, resume: str | Path | None = None, force: bool = False) -> TrainResult:
    """Run (or continue) training as configured; returns when done or stopped.

    Args:
        config: the resolved configuration; ``data`` and ``output`` must be set.
        resume: a checkpoint written by a previous run, to continue from.
        force: resume even when the training files or the settings of a step changed.

    Raises:
        TrainingError, ValueError (bad settings or data), p3m.checkpoint.CheckpointError.
    """
    config.validate()
    if not config.data or not config.output:
        raise TrainingError("both the dataset root (--data) and the output folder (--output) are needed")
    info, device = distributed.init(config.device)
    try:
        with deterministic_mode(device) if config.deterministic else contextlib.nullcontext([]) as settings:
            return _train(config, resume, force, info, device, settings)
    finally:
        distributed.shutdown()


def _train(config: TrainConfig, resume, force: bool, info: DistInfo, device: torch.device,
           deterministic_settings: list[str]) -> TrainResult:
    output = Path(config.output)
    if config.batch_size % info.world_size:
        raise TrainingError(f"batch size {config.batch_size} is the global batch and must be divisible by the "
                            f"{info.world_size} processes")
    if config.precision == "fp16" and device.type not in ("cuda", "cpu"):
        raise TrainingError(f"--precision fp16 needs CUDA or the CPU, not {device.type}")
    spec = get_spec(config.model)
    config.model = spec.name
    resume_content = resume_state = None
    if resume:
        resume_content = read_checkpoint(resume)  # read once: weights and training state
        resume_state = resume_content.get("train_state")
        if resume_state is None:
            raise TrainingError(f"{resume}: holds weights but no training state; start a new run from it "
                                f"with --weights instead of --resume")
    initial = _initial_weights(config, spec, info) if not resume else {"source": "checkpoint", "path": str(resume)}
    dataset = P3MTrainDataset(config.data, config.image_size, config.crop_sizes, tuple(config.trimap_kernel),
                              use_fgbg={"auto": None, "on": True, "off": False}[config.composition],
                              copy_paste=_copy_paste(config))
    record, manifest, history = _provenance(config, resume, resume_state, force, dataset, initial, info, device)

    if info.is_main:
        OutputFolder(output).mkdir(output)  # also removes temporaries left by a killed run
        save_yaml(config, output / CONFIG)
        provenance.write(output, record, manifest, history)
    distributed.barrier(info)
    log = run_logger(info, output)
    with warnings_to_log(info, output):
        for line in history[-1]["differences"]:
            log(f"warning: resuming with a difference: {line}")
        if deterministic_settings:
            log(f"deterministic: {', '.join(deterministic_settings)}; {torch.get_num_threads()} torch thread(s) "
                f"(a rerun or resume must use as many to match bit for bit)")
        return _run(config, resume, resume_content, resume_state, dataset, spec, initial, record, info, device,
                    output, log)


def _run(config, resume, resume_content, resume_state, dataset, spec, initial, record, info, device, output, log):
    files = dataset.files
    for line in files.problems[:5]:
        log(f"data: {line}")
    if len(files.problems) > 5:
        log(f"data: ... {len(files.problems) - 5} more file(s) left out")
    if not dataset.use_fgbg:
        reason = "turned off" if config.composition == "off" else (
            f"fg/bg found for {files.fgbg_count} of {len(dataset)} samples; "
            f"run `p3m dataset prepare {config.data}` to estimate them")
        log(f"composition loss off ({reason})")
    if dataset.copy_paste is not None:
        cp = dataset.copy_paste
        levels = ", ".join(f"{kind} with probability {prob:g}" for kind, prob, on in
                           (("image level", cp.prob_icp, cp.icp), ("feature level", cp.prob_fcp, cp.fcp)) if on)
        log(f"P3M-CP {cp.mode}: {len(cp.faces)} face image(s) from {cp.faces.folder}, pasted at {levels} into the "
            f"face masks of {files.face_mask_count} of {len(dataset)} training images")
    per_process = config.batch_size // info.world_size
    sampler = TrainSampler(len(dataset), per_process, info.world_size, info.rank, config.seed)
    total_steps = config.max_steps or epochs_to_steps(config.epochs, sampler.steps_per_epoch)
    workers = config.workers > 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=per_process, sampler=sampler, num_workers=config.workers,
        pin_memory=device.type == "cuda", persistent_workers=workers,
        worker_init_fn=functools.partial(worker_init, log_path=output / TEXT_LOG if info.is_main else None)
        if workers else None,
        prefetch_factor=4 if workers else None,
        multiprocessing_context=_worker_context() if workers else None,
        generator=data_generator(config.seed + info.rank),
    )

    seed_everything(config.seed + info.rank)
    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = spec.build()
    _load_initial_weights(model, spec, initial, log)
    torch.manual_seed(config.seed + info.rank)
    if device.type == "cuda" and not config.deterministic:
        torch.backends.cudnn.benchmark = True
    if config.sync_bn and info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    module = model.to(device)
    # Frozen in every run, not only distributed ones, so that the optimiser state of a
    # checkpoint fits whatever number of processes resumes it.
    unused = _freeze_unused_parameters(module, device)
    if unused:
        log(f"{len(unused)} parameter tensor(s) of {spec.name} never receive a gradient and are frozen: "
            f"{', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}")
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters)

    params = [param for param in module.parameters() if param.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    trainer = Trainer(config, model, module, optimizer, scheduler, scaler, loader, sampler, device, info, output,
                      total_steps, dataset.use_fgbg, provenance=record, log=log)
    if resume:
        load_weights(module, resume, spec.name, content=resume_content)
        resume_content = None  # the weights are in the model now
        trainer.load_train_state(resume_state)
        log(f"resumed from {resume} at step {trainer.step}")
        if info.is_main:
            truncate_jsonl(output / LOG, trainer.step)
            truncate_jsonl(output / VAL_LOG, trainer.step)
    splits = _validation_splits(config, log) if info.is_main else {}
    splits = distributed.broadcast_object(info, splits)
    hooks = [LogHook()]
    if splits:
        from p3m.train.validation import ValidationHook

        hooks.append(ValidationHook(splits))
    # Validation before the checkpoint, so that a last.pth written at a validated step
    # carries the best score of that step.
    trainer.hooks = [*hooks, CheckpointHook()]

    log(f"{spec.name} on {len(dataset)} images, {info.world_size} process(es) on {device.type}, global batch "
        f"{config.batch_size}, {sampler.steps_per_epoch} steps per epoch, steps {trainer.step} -> {total_steps}, "
        f"{config.precision}, output {output}")
    if trainer.step >= total_steps:
        log(f"nothing to do: step {trainer.step} already reached {total_steps} (raise --max-steps or --epochs)")
        return TrainResult(output, trainer.step, total_steps, False)

    with _stop_on_signals(trainer):
        trainer.run()
    if trainer.stop_requested and trainer.step < total_steps:
        trainer.interrupted = True
    else:
        log(f"done: {trainer.step} steps; weights {output / 'last.pth'}")
    distributed.barrier(info)
    return TrainResult(output, trainer.step, total_steps, trainer.interrupted)


def _copy_paste(config: TrainConfig) -> CopyPaste | None:
    """P3M-CP settings, the face folder checked (one face must load), or None when off."""
    if not config.p3m_cp:
        return None
    faces = FaceSource(config.cp_faces)
    faces.check()
    return CopyPaste(config.p3m_cp, faces, config.cp_prob_icp, config.cp_prob_fcp)


# ----------------------------------------------------------------------------- initial weights

def _initial_weights(config: TrainConfig, spec: ModelSpec, info: DistInfo) -> dict[str, Any]:
    """Where a new run's weights come from, found (and downloaded, by rank 0) before anything is written.

    Returns ``{"source": "weights" | "imagenet" | "file" | "none", "path", "sha256", "size"}``.
    """
    if config.weights:
        name = None if config.weights == "official" else config.weights
        source, entry = "weights", spec.name
    elif config.backbone_weights == RANDOM_INIT:
        return {"source": RANDOM_INIT}
    elif config.backbone_weights == IMAGENET:
        name, source, entry = None, IMAGENET, f"{spec.name}-imagenet"
    else:
        name, source, entry = config.backbone_weights, "file", None
    found: dict[str, Any] | str
    if info.is_main:
        found = _find_file(entry, name, source)
    found = distributed.broadcast_object(info, found if info.is_main else None)
    if isinstance(found, str):
        raise TrainingError(found)
    return found


def _find_file(entry: str | None, name: str | None, source: str) -> dict[str, Any] | str:
    """The file's record, or the one-line reason it cannot be had."""
    from p3m.weights import WeightsUnavailableError, resolve, sha256_of

    try:
        path = resolve(entry, name) if entry else Path(name).expanduser()
    except WeightsUnavailableError as error:
        if source == IMAGENET:
            return f"{error}; or train from random weights with --backbone-weights {RANDOM_INIT}"
        return str(error)
    if not path.is_file():
        return f"{path}: no such backbone weights file (--backbone-weights takes a file, {IMAGENET} or {RANDOM_INIT})"
    return {"source": source, "path": str(path), "size": path.stat().st_size, "sha256": sha256_of(path)}


def _load_initial_weights(model: nn.Module, spec: ModelSpec, initial: dict[str, Any], log) -> None:
    source = initial["source"]
    if source == "weights":
        load_weights(model, initial["path"], spec.name)
        log(f"initial weights: {initial['path']}")
    elif source in (IMAGENET, "file"):
        from p3m.backbone import load_backbone

        report = load_backbone(model, initial["path"])
        for line in report.summary().splitlines():
            log(line)
    elif source == RANDOM_INIT:
        log(f"the encoder starts from random initialisation (--backbone-weights {RANDOM_INIT}; "
            f"the papers start from ImageNet weights)")


# ----------------------------------------------------------------------------- provenance

def _provenance(config: TrainConfig, resume, resume_state, force: bool, dataset: P3MTrainDataset,
                initial: dict[str, Any], info: DistInfo, device: torch.device):
    """``(record, manifest, history)`` of this run, computed on rank 0; on resume, compared with the
    checkpoint's record first (raises TrainingError when blocking differences are not forced)."""
    outcome: Any = None
    if info.is_main:
        paths = [path for sample in dataset.samples
                 for path in (sample.image, sample.alpha, *((sample.fg, sample.bg) if dataset.use_fgbg else ()))]
        if dataset.copy_paste is not None:
            paths += [sample.face_mask for sample in dataset.samples if sample.face_mask is not None]
            paths += dataset.copy_paste.faces.files
        manifest = provenance.file_manifest(config.data, paths)
        record = provenance.build_record(config.to_dict(), manifest, initial, str(device), torch.get_num_threads(),
                                         info.world_size)
        previous = provenance.read(Path(config.output)) if resume else None
        history = list(previous.get("history", [])) if previous else []
        if resume:
            outcome = _compare_on_resume(resume, resume_state, force, record, manifest, previous)
            if not isinstance(outcome, str):
                differences, forced = outcome
                history.append(provenance.history_entry(int(resume_state["step"]), "resume", differences, forced))
        else:
            history.append(provenance.history_entry(0, "start", [], False))
        if not isinstance(outcome, str):
            outcome = (record, manifest, history)
    outcome = distributed.broadcast_object(info, outcome)
    if isinstance(outcome, str):
        raise TrainingError(outcome)
    return outcome


def _compare_on_resume(resume, resume_state, force: bool, record, manifest,
                       previous) -> tuple[list[str], bool] | str:
    """``(differences to report, whether --force overrode some)``, or the refusal message when
    differences block and are not forced."""
    saved = resume_state.get("provenance")
    if not saved:
        return ["the checkpoint has no provenance record: training files and settings were not compared"], False
    saved_manifest = previous.get("manifest") if previous else None
    blocking, notes = provenance.compare(saved, record, saved_manifest, manifest)
    if blocking and not force:
        return (f"{resume}: not resuming, the run would not continue as it started: {'; '.join(blocking)} "
                f"(resume anyway with --force, or start a new run)")
    return [*(f"{line} (--force)" for line in blocking), *notes], bool(blocking)


# ----------------------------------------------------------------------------- helpers

def _validation_splits(config: TrainConfig, log) -> dict[str, list]:
    if not config.validate_every:
        return {}
    from p3m.evaluation import dataset_samples

    splits = {}
    for split in config.val_splits:
        try:
            samples, problems = dataset_samples(config.data, split)
        except (NotADirectoryError, FileNotFoundError):
            log(f"validation: {split} not found under {config.data}, skipped")
            continue
        for line in problems[:3]:
            log(f"validation: {line}")
        if config.val_max_images:
            samples = samples[:config.val_max_images]
        if samples:
            splits[split] = samples
    return splits


def _freeze_unused_parameters(module: nn.Module, device: torch.device) -> list[str]:
    """Freeze parameters that no output depends on, found with one small forward/backward on a copy.

    DistributedDataParallel otherwise waits forever for their gradients; freezing them
    changes nothing, since Adam skips parameters without gradients.
    """
    import copy

    probe = copy.deepcopy(module).train()
    generator = torch.Generator(device="cpu").manual_seed(0)
    output = probe(torch.randn(1, 3, 64, 64, generator=generator).to(device))
    total = sum(tensor.float().sum() for tensor in (output.global_logits, output.local_alpha, *output.side_logits))
    total.backward()
    unused = [name for name, param in probe.named_parameters() if param.requires_grad and param.grad is None]
    del probe, output, total
    params = dict(module.named_parameters())
    for name in unused:
        params[name].requires_grad_(False)
    return unused


def _worker_context():
    """Data-loader workers start from a fork server, not a fork of this process: a plain fork
    can deadlock in OpenCV or OpenMP when this process already used their thread pools."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["p3m.train.dataset"])
    return context


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """First Ctrl-C / SIGTERM: finish the step, save, stop. A second Ctrl-C interrupts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        if trainer.signal_received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.log("stopping after this step (Ctrl-C again to abort without saving)")
        trainer.request_stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
