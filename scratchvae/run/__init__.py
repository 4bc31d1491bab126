"""Running the model: the run object, the training loop, checkpoints, atomic
files, progress, pictures, the one-file NumPy export and the ``scratchvae``
command."""
from .run import Run, TrainConfig
from .train import Trainer, TrainingDiverged

__all__ = ["Run", "TrainConfig", "Trainer", "TrainingDiverged"]
