"""The version of Foveal (one place; the package and every checkpoint read it from here)."""

__version__ = "0.1.0"
