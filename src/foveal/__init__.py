"""Foveal: train, tune, evaluate and export vision foundation models from typed spec files."""

__version__ = "0.1.0"
