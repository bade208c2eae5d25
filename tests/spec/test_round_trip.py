"""Every network x action: defaults + required fields -> resolve -> experiment.yaml -> reload."""

from __future__ import annotations

from typing import Any

import pytest

from foveal.networks.registry import ACTIONS, list_networks
from foveal.spec import load_spec, save_spec, walk_leaves
from foveal.spec.fields import unwrap_optional

pytestmark = pytest.mark.unit

CASES = [(net.name, action) for net in list_networks() for action in ACTIONS]
# needed by a cross-field rule rather than the schema (either of two keys will do)
ALSO_NEEDED = {("classification", "evaluate"): {"dataset.val_dataset.images_dir": "/data/val"}}


def _required_values(cls: type, action: str) -> dict[str, Any]:
    """A plausible value for every field the action requires."""
    values = {}
    for key, tp, meta, _ in walk_leaves(cls):
        required = meta.get("required")
        if required is True or action in (required or ()):
            base, _ = unwrap_optional(tp)
            values[key] = (
                [f"/data/{key}"] if getattr(base, "__origin__", None) is list else f"/data/{key}.onnx"
            )
    return values


@pytest.mark.parametrize(("network", "action"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_round_trip(tmp_path, network, action):
    from foveal.networks.registry import get_network

    net = get_network(network)
    cfg = load_spec(
        net.config_cls,
        None,
        _required_values(net.config_cls, action) | ALSO_NEEDED.get((network, action), {}),
        action=action,
        resolve=net.resolve,
    )
    path = save_spec(cfg, tmp_path / "experiment.yaml")
    again = load_spec(net.config_cls, path, action=action, resolve=net.resolve)
    assert again == cfg
    assert save_spec(again, tmp_path / "again.yaml").read_text() == path.read_text()
