"""Training (``faceveil train``): data, losses, the resumable loop."""

from .config import TrainConfig, load_config
from .loop import Trainer, train

__all__ = ["TrainConfig", "load_config", "Trainer", "train"]
