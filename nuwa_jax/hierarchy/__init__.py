"""Diffusion over Diffusion: the coarse-to-fine plan shared by training and generation."""

from nuwa_jax.hierarchy.plan import (
    HierarchyPlan,
    autoregressive_calls,
    cost_table,
    full_length,
    generation_plan,
)

__all__ = ["HierarchyPlan", "autoregressive_calls", "cost_table", "full_length", "generation_plan"]
