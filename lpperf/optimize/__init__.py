"""Inference optimizations: registered steps, recipes (named lists of steps), the engine a recipe
builds, the exact layer rewrites and dedicated GPU kernels the steps apply."""
