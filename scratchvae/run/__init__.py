"""Running the model: the run object, the training loop, checkpoints,
progress, pictures, the roofline report of a step, the one-file NumPy export
and the ``scratchvae`` command. The atomic file writes they use are
``scratchvae/atomic.py``, beside the package's other leaf modules."""
from .run import Run, TrainConfig
from .train import Trainer, TrainingDiverged

__all__ = ["Run", "TrainConfig", "Trainer", "TrainingDiverged"]
