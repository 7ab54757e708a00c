"""Hyper-parameter sweeps over ml-collections configs (docs/sweeps.md).

A config file defines get_config(arg) and get_hyper(h) (nuwa_jax.sweep.hyper);
`python -m nuwa_jax.sweep` checks, names and runs its points (nuwa_jax.sweep.launchers)
and gathers their metrics into one table (nuwa_jax.sweep.results).
"""
