"""``p3m train``: privacy-preserving training of P3M-Net on the P3M-10k layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from p3m.cli import CommandError

# flag attribute -> config key
_FLAGS = {
    "data": "data", "output": "output", "model": "model", "max_steps": "max_steps", "epochs": "epochs",
    "batch_size": "batch_size", "image_size": "image_size", "lr": "lr", "device": "device",
    "precision": "precision", "backbone_weights": "backbone_weights", "weights": "weights",
    "workers": "workers", "seed": "seed", "log_every": "log_every", "checkpoint_every": "checkpoint_every",
    "validate_every": "validate_every", "val_max_images": "val_max_images", "composition": "composition",
    "deterministic": "deterministic", "p3m_cp": "p3m_cp", "cp_faces": "cp_faces", "cp_prob_icp": "cp_prob_icp",
    "cp_prob_fcp": "cp_prob_fcp",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune P3M-Net on face-blurred data (P3M-10k layout)",
        description="Train P3M-Net with the papers' losses and augmentation on a dataset in the P3M-10k layout "
                    "(ROOT/train/blurred_image + mask; fg/bg enable the composition loss). Defaults are the "
                    "papers' recipe (ImageNet-initialised encoder, downloaded once; Adam, lr 1e-5, batch 8, "
                    "150 epochs, 512 px). Run under "
                    "`torchrun --nproc_per_node N -m p3m train ...` for multi-GPU (or multi-process CPU) training.",
        epilog="Examples:\n"
               "  p3m train --data P3M-10k --output runs/r34\n"
               "  p3m train --data P3M-10k --output runs/r34 --backbone-weights r34mp_pretrained_imagenet.pth.tar\n"
               "  p3m train --data demo --output runs/demo --backbone-weights none --deterministic --seed 3\n"
               "  p3m train --data my-blurred-set --output runs/ft --weights official --epochs 10 --lr 5e-6\n"
               "  p3m train --output runs/r34 --data P3M-10k --resume\n"
               "  p3m train --data P3M-10k --output runs/cp --p3m-cp both --cp-faces celeb-faces/\n"
               "  torchrun --nproc_per_node 4 -m p3m train --data P3M-10k --output runs/r34 --batch-size 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", metavar="ROOT", help="dataset root (holding train/ and, for validation, validation/)")
    parser.add_argument("--output", "-o", metavar="DIR", help="run folder: config.yaml, log.jsonl, last.pth, ...")
    parser.add_argument("--config", metavar="FILE.yaml", help="settings file (see p3m/configs/p3m10k_resnet34.yaml)")
    parser.add_argument("--resume", nargs="?", const="", metavar="FILE",
                        help="continue a run from DIR/last.pth (or FILE); its saved config is the base")
    parser.add_argument("--force", action="store_true",
                        help="resume even though the training files or the settings of a step changed")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="registry name: resnet34 (default), vitae-s, swin-t")
    model.add_argument("--backbone-weights", metavar="FILE|imagenet|none",
                       help="encoder initialisation: imagenet (default: the official ImageNet file, downloaded once; "
                            "see 'p3m weights list'), a file (e.g. r34mp_pretrained_imagenet.pth.tar, torchvision "
                            "ResNet-34), or none (random)")
    model.add_argument("--weights", metavar="FILE",
                       help="start from a full P3M-Net checkpoint (fine-tuning); 'official' for the released weights")
    optim = parser.add_argument_group("schedule")
    optim.add_argument("--epochs", type=float, help="epochs (default 150)")
    optim.add_argument("--max-steps", type=int, metavar="N", help="optimiser steps; overrides --epochs")
    optim.add_argument("--batch-size", type=int, metavar="N", help="global batch size (default 8)")
    optim.add_argument("--image-size", type=int, metavar="PX", help="training size, a multiple of 32 (default 512)")
    optim.add_argument("--lr", type=float, help="Adam learning rate (default 1e-5)")
    optim.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="default fp32")
    optim.add_argument("--device", help="auto (CUDA when present, else CPU; the default), cpu, cuda, cuda:N, mps")
    optim.add_argument("--seed", type=int, help="default 0")
    optim.add_argument("--deterministic", action="store_true", default=None,
                       help="bit-identical reruns and resumes (same seed, data, threads; CPU, CUDA as far as torch "
                            "allows); slower")
    data = parser.add_argument_group("data and logging")
    data.add_argument("--workers", type=int, metavar="N", help="data-loader processes per training process (default 4)")
    data.add_argument("--composition", choices=("auto", "on", "off"),
                      help="composition loss: auto (on when every sample has fg/bg), on, off")
    data.add_argument("--log-every", type=int, metavar="N", help="steps between log entries (default 10)")
    data.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints (default 1000)")
    data.add_argument("--validate-every", type=int, metavar="N",
                      help="steps between validations on P3M-500-P/NP (default 5000; 0 disables)")
    data.add_argument("--val-max-images", type=int, metavar="N", help="validate on the first N images of each split")
    copy_paste = parser.add_argument_group("P3M-CP (copy public faces into the blurred face regions)")
    copy_paste.add_argument("--p3m-cp", choices=("icp", "fcp", "both"),
                            help="paste public faces where train/facemask marks the blurred face: icp (into the "
                                 "image), fcp (into the encoder features) or both")
    copy_paste.add_argument("--cp-faces", metavar="DIR",
                            help="folder of public face images (DIR/facemask/ may hold their face masks; an image "
                                 "without one is taken as a face crop)")
    copy_paste.add_argument("--cp-prob-icp", type=float, metavar="P",
                            help="probability of an image-level paste per sample with a face (default 0.5)")
    copy_paste.add_argument("--cp-prob-fcp", type=float, metavar="P",
                            help="probability of a feature-level paste per sample with a face (default 0.5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, e.g. --set lr_schedule=cosine --set val_splits=[P3M-500-NP]")
    parser.set_defaults(handler=run)


def resolve_config(args):
    """The configuration of this invocation and the checkpoint to resume from (or None)."""
    from p3m.train.config import TrainConfig, load_yaml, merge, parse_assignments

    config = TrainConfig()
    resume = None
    if args.resume is not None:
        if args.resume:
            resume = Path(args.resume)
            base_dir = Path(args.output) if args.output else resume.parent
        else:
            if not args.output:
                raise CommandError("--resume without a FILE needs --output DIR (the run to continue)")
            base_dir = Path(args.output)
            resume = base_dir / "last.pth"
        if not resume.is_file():
            raise CommandError(f"{resume}: no checkpoint to resume from")
        saved = base_dir / "config.yaml"
        if saved.is_file():
            config = merge(config, load_yaml(saved), str(saved))
        if not args.output:
            config = merge(config, {"output": str(base_dir)}, "--resume")
    if args.config:
        config = merge(config, load_yaml(args.config), args.config)
    flags = {key: getattr(args, attr) for attr, key in _FLAGS.items() if getattr(args, attr) is not None}
    config = merge(config, flags, "command line")
    config = merge(config, parse_assignments(args.set), "--set")
    return config.validate(), resume


def run(args) -> int:
    from p3m.backbone import BackboneError
    from p3m.checkpoint import CheckpointError
    from p3m.train.config import ConfigError
    from p3m.train.dataset import DatasetError
    from p3m.train.run import train
    from p3m.train.trainer import LAST, TrainingError
    from p3m.weights import WeightsUnavailableError

    try:
        config, resume = resolve_config(args)
    except ConfigError as error:
        raise CommandError(str(error)) from None
    if not config.data:
        raise CommandError("no dataset: give --data ROOT (a folder in the P3M-10k layout)")
    if not config.output:
        raise CommandError("no run folder: give --output DIR")
    if not Path(config.data).is_dir():
        raise CommandError(f"{config.data}: no such dataset folder")
    if resume is None and (Path(config.output) / LAST).exists():
        raise CommandError(f"{config.output} already holds a run ({LAST}); continue it with --resume "
                           f"or choose another --output")
    try:
        result = train(config, resume, force=args.force)
    except (ConfigError, DatasetError, TrainingError, BackboneError, CheckpointError,
            WeightsUnavailableError) as error:
        raise CommandError(str(error)) from None
    except ValueError as error:
        raise CommandError(str(error)) from None
    return 130 if result.interrupted else 0
