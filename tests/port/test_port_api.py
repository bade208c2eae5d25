"""foveal.port_hf: the port as a Python call, then the ported network through foveal.run."""

from __future__ import annotations

import pytest

import foveal
from foveal.errors import PortSourceError

pytestmark = pytest.mark.integration


def test_port_hf_then_run_the_ported_network(tiny_model, tmp_path, capfd):
    source = tiny_model("vit")
    capfd.readouterr()  # the fixture's own output (transformers' save_pretrained)
    report = foveal.port_hf(source, name="tinyvit", workspace=tmp_path / "ws")
    assert report.status == "passed"
    assert "tinyvit" in [m["name"] for m in foveal.models(workspace=tmp_path / "ws")]
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # quiet unless progress=True
    with pytest.raises(PortSourceError):
        foveal.port_hf(tmp_path / "missing", name="nope", workspace=tmp_path / "ws")
