"""classification: a ViT checkpoint of another patch size, depth or LayerScale setting is a mismatch.

Such a checkpoint used to load "mostly" with a warning, leaving a random patch embedding or dropping
the learned LayerScale gammas: a broken start that looked like a pretrained one.
"""

from __future__ import annotations

import pytest
import torch

from foveal.engine import CheckpointError, save_weights_only
from foveal.engine.pretrained import load_pretrained
from foveal.nn import VisionTransformer
from foveal.nn.classifier import Classifier

pytestmark = pytest.mark.unit

TINY = {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2}
KEY = "model.backbone.pretrained_backbone_path"


def _student(tmp_path, **kw) -> tuple[VisionTransformer, object]:
    """An nvdinov2 student file (vit_t-like: LayerScale) with ``kw`` overriding the ViT."""
    torch.manual_seed(0)
    source = VisionTransformer(**{**TINY, "patch_size": 8, "init_values": 1e-5, **kw})
    with torch.no_grad():  # trained gammas are far from their 1e-5 init
        for block in source.blocks:
            block.ls1.gamma.fill_(0.3)
    path = save_weights_only(
        source.state_dict(),
        tmp_path / "student_epoch_002_step_00010.pth",
        network="nvdinov2",
        config={"model": {"backbone": {"student_type": "vit_t"}}},
        kind="student",
        epoch=2,
    )
    return source, path


def _classifier(**kw) -> Classifier:
    torch.manual_seed(1)
    return Classifier(VisionTransformer(**{**TINY, "patch_size": 8, **kw}), 3)


def test_matching_student_loads_every_tensor_including_layerscale(tmp_path):
    source, path = _student(tmp_path)
    model = _classifier(init_values=1e-5)
    summary = load_pretrained(model, path, "vit_t", key=KEY)
    assert f"loaded {len(source.state_dict())} backbone tensors" in summary
    assert torch.equal(model.backbone.blocks[1].ls1.gamma, source.blocks[1].ls1.gamma)


def test_layerscale_student_into_a_model_without_layerscale_is_a_one_line_error(tmp_path):
    _, path = _student(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"have LayerScale \(ls1/ls2\.gamma\), the model's do not"
    ) as err:
        load_pretrained(_classifier(init_values=None), path, "vit_tiny_patch16", key=KEY)
    assert "\n" not in str(err.value) and "model.backbone.type=vit_tiny_patch16" in str(err.value)


def test_other_patch_size_is_a_mismatch_not_a_random_patch_embedding(tmp_path):
    _, path = _student(tmp_path, patch_size=16)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight absent from the checkpoint"):
        load_pretrained(_classifier(init_values=1e-5), path, "vit_t", key=KEY)


def test_model_with_layerscale_or_more_blocks_than_the_checkpoint_is_a_mismatch(tmp_path):
    torch.manual_seed(0)
    plain = VisionTransformer(**TINY, patch_size=8)  # MAE-style: no LayerScale
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ls1\.gamma.* absent from the checkpoint"):
        load_pretrained(_classifier(init_values=1e-5), tmp_path / "plain.pth", "vit_t", key=KEY)
    with pytest.raises(CheckpointError, match=r"blocks\.2\..* absent from the checkpoint"):
        load_pretrained(_classifier(depth=3), tmp_path / "plain.pth", "vit_custom", key=KEY)
