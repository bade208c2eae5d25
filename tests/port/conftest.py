"""Fixtures of the port tests: tiny HF model folders (the registries are restored by tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, shared by the port test modules

from tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_model("vit")``: a saved tiny random model folder (made once per session)."""
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            made[name] = save_tiny_model(name, tmp_path_factory.mktemp("hf") / name)
        return made[name]

    return make
