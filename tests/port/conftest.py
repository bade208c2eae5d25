"""Fixtures of the port tests: tiny HF model folders and a registry restored after each test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, shared by the port test modules

from tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ported networks and backbones registered by a test must not leak into the next one;
    ``-w`` sets $FOVEAL_WORKSPACE for the process, which monkeypatch puts back."""
    from foveal.networks import registry as networks
    from foveal.nn import registry as backbones

    networks.list_networks()
    saved_networks, saved_backbones = dict(networks._NETWORKS), dict(backbones._BACKBONES)
    monkeypatch.delenv("FOVEAL_WORKSPACE", raising=False)
    yield
    networks._NETWORKS.clear()
    networks._NETWORKS.update(saved_networks)
    backbones._BACKBONES.clear()
    backbones._BACKBONES.update(saved_backbones)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_model("vit")``: a saved tiny random model folder (made once per session)."""
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            made[name] = save_tiny_model(name, tmp_path_factory.mktemp("hf") / name)
        return made[name]

    return make
