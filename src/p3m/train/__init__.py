"""Privacy-preserving training (PPT) of P3M-Net: losses, data, loop, configuration."""
from p3m.train.config import TrainConfig
from p3m.train.losses import p3m_losses

__all__ = ["TrainConfig", "p3m_losses", "train"]


def train(config: TrainConfig, resume=None):
    """Run or continue a training run (see :func:`p3m.train.trainer.train`)."""
    from p3m.train.trainer import train as _train

    return _train(config, resume)
