"""Image-text models (CLIP, SigLIP) port as their vision tower: the nested ``vision_config`` gives
the input geometry, the ``...VisionModel`` class loads the tower's weights from the full model's
file (the text tower is left out), and the ported network classifies the tower's pooled feature
(train -> evaluate -> export -> ONNX Runtime parity, as every port is verified)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import foveal
from foveal.port.inspect import decide_task, inspect_folder, is_vision

pytestmark = pytest.mark.integration

TEXT = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
        "num_attention_heads": 4, "max_position_embeddings": 64}  # fmt: skip
VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
          "num_hidden_layers": 2, "num_attention_heads": 4}  # fmt: skip


def _save(kind: str, folder: Path) -> torch.nn.Module:
    import transformers

    config_cls, model_cls = {
        "clip": (transformers.CLIPConfig, transformers.CLIPModel),
        "siglip": (transformers.SiglipConfig, transformers.SiglipModel),
    }[kind]
    torch.manual_seed(0)
    model = model_cls(config_cls(text_config=TEXT, vision_config=VISION)).eval()
    model.save_pretrained(folder)
    return model


def test_vision_config_makes_an_image_text_model_a_vision_tower(tmp_path):
    _save("clip", tmp_path / "clip")
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert is_vision(config, tmp_path / "clip") == (True, "")
    assert decide_task(config, None) == "feature-extraction"
    info = inspect_folder(tmp_path / "clip")
    assert info.architecture == "CLIPModel (vision tower)" and info.image_size == 32
    assert info.sizes["patch_size"] == 8 and info.num_channels == 3


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_and_siglip_vision_towers_port_and_verify(kind, tmp_path):
    source = _save(kind, tmp_path / kind)
    ws = tmp_path / "ws"
    report = foveal.port_hf(tmp_path / kind, name=f"my_{kind}", workspace=ws)
    assert report.status == "passed" and report.mapping == "wrapped"
    phases = {p["phase"]: p for p in report.phases}
    assert phases["verify.onnxruntime"]["status"] in ("pass", "warn")
    # the tower's weights are the source model's vision tower, not a fresh initialisation
    from foveal.nn import create_backbone

    backbone = create_backbone(f"my_{kind}")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = backbone.forward_features(x)["x_norm_clstoken"]
        theirs = source.vision_model(pixel_values=x).pooler_output
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
