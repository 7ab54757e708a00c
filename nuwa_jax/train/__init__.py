"""Training: train state and optimiser, losses, orbax checkpoints, samples, the loop, its CLI."""

from nuwa_jax.train.checkpoint import Checkpointer
from nuwa_jax.train.state import TrainState, create_train_state, make_optimizer
from nuwa_jax.train.trainer import NonFiniteError, TrainStep, make_train_step, train

__all__ = [
    "Checkpointer",
    "NonFiniteError",
    "TrainState",
    "TrainStep",
    "create_train_state",
    "make_optimizer",
    "make_train_step",
    "train",
]
