"""Privacy-preserving training (PPT) of P3M-Net: losses, data, loop, configuration.

Modules: ``config`` (settings), ``dataset`` (data and augmentation), ``losses``,
``trainer`` (the loop and checkpoints), ``state`` (random generators,
determinism), ``provenance`` (what a run was made from), ``logs``,
``validation``, ``distributed`` and ``run`` (building a run: what ``p3m train`` calls).
"""
from p3m.train.config import TrainConfig
from p3m.train.losses import p3m_losses

__all__ = ["TrainConfig", "p3m_losses", "train"]


def train(config: TrainConfig, resume=None, force: bool = False):
    """Run or continue a training run (see :func:`p3m.train.run.train`)."""
    from p3m.train.run import train as _train

    return _train(config, resume, force)
