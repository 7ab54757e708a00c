"""`python -m nuwa_jax.train --config=configs/tiny.py --workdir=DIR [--max_steps=N]`."""

from nuwa_jax import cli

_CONFIG = cli.define_config_flag()

from absl import flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop after this many steps.")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from nuwa_jax import parallel

    parallel.initialize_distributed()
    from nuwa_jax.train import trainer

    trainer.train(_CONFIG.value, _WORKDIR.value, max_steps=_MAX_STEPS.value)


if __name__ == "__main__":
    cli.run(main)
