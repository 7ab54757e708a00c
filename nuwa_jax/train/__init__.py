"""Training: train state and optimiser, losses, orbax checkpoints, the loop and its CLI."""

from nuwa_jax.train.checkpoint import Checkpointer
from nuwa_jax.train.state import TrainState, create_train_state, make_optimizer
from nuwa_jax.train.trainer import NonFiniteError, train

__all__ = [
    "Checkpointer",
    "NonFiniteError",
    "TrainState",
    "create_train_state",
    "make_optimizer",
    "train",
]
