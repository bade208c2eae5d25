"""Units of the port: task decisions, the generic backbone wrapper, derived schemas, argv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import write_config

from foveal.errors import PortSourceError
from foveal.port.inspect import decide_task, input_geometry, inspect_folder, is_vision

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("arch", "model_type", "tag", "task"),
    [
        ("ViTForImageClassification", "vit", None, "image-classification"),
        ("DeiTForImageClassificationWithTeacher", "deit", None, "image-classification"),
        ("Dinov2Model", "dinov2", None, "feature-extraction"),
        ("DetrForObjectDetection", "detr", None, "object-detection"),
        ("Mask2FormerForUniversalSegmentation", "mask2former", None, "universal-segmentation"),
        ("DepthAnythingForDepthEstimation", "depth_anything", None, "depth-estimation"),
        ("SiglipModel", "siglip", None, "zero-shot"),
        ("", "resnet", "image-classification", "image-classification"),
        ("", "resnet", None, "image-classification"),
    ],
)
def test_decide_task(arch, model_type, tag, task):
    config = {"architectures": [arch] if arch else None, "model_type": model_type}
    assert decide_task(config, tag) == task


def test_is_vision_tells_text_and_audio_apart(tmp_path):
    assert is_vision({"model_type": "vit", "image_size": 224}, tmp_path) == (True, "")
    assert not is_vision({"model_type": "bert", "vocab_size": 30522}, tmp_path)[0]
    assert "audio" in is_vision({"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]}, tmp_path)[1]
    (tmp_path / "tokenizer.json").write_text("{}")
    assert "text" in is_vision({"model_type": "mystery"}, tmp_path)[1]


def test_input_geometry_prefers_config_then_preprocessor():
    assert input_geometry({"image_size": 384}, {})[0] == 384
    size, mean, std = input_geometry({}, {"crop_size": {"height": 256, "width": 256}, "image_mean": [0.5]})
    assert size == 256 and mean == [0.5] * 3 and len(std) == 3
    assert input_geometry({}, {})[0] == 224


def test_inspect_reads_the_weights_schema(tiny_model):
    info = inspect_folder(tiny_model("vit"))
    assert info.task == "image-classification" and info.image_size == 32 and info.num_labels == 3
    assert info.weights["num_tensors"] == 40 and info.weights["dtypes"] == {"F32": 40}
    assert info.weights["groups"]["vit.encoder.layer"]["tensors"] == 32
    assert info.mean == [0.5, 0.5, 0.5]


def test_inspect_refuses_a_folder_without_weights(tmp_path):
    folder = write_config(tmp_path / "m", {"architectures": ["ViTForImageClassification"], "model_type": "vit",
                                           "image_size": 32})  # fmt: skip
    with pytest.raises(PortSourceError, match="no model.safetensors"):
        inspect_folder(folder)


def test_hf_backbone_feature_layer_ids_and_decay(tiny_model):
    from foveal.nn.hf_backbone import HFBackbone, load_hf_model

    folder = tiny_model("resnet")
    backbone = HFBackbone(load_hf_model(folder, "image-classification"), "image-classification", 32)
    out = backbone.forward_features(torch.randn(2, 3, 32, 32))
    assert out["x_norm_clstoken"].shape == (2, backbone.embed_dim) == (2, 16)
    ids = {n: backbone.layer_id_for_param(n) for n, _ in backbone.named_parameters()}
    assert ids["model.resnet.embedder.embedder.convolution.weight"] == 0
    assert backbone.n_blocks >= 2 and max(ids.values()) <= backbone.n_blocks + 1
    first_stage = [i for n, i in ids.items() if ".stages.0." in n]
    last_stage = [i for n, i in ids.items() if ".stages.1." in n]
    assert max(first_stage) < min(last_stage)
    vit = HFBackbone(load_hf_model(tiny_model("vit"), "image-classification"), "image-classification", 32)
    assert {
        "model.vit.embeddings.cls_token",
        "model.vit.embeddings.position_embeddings",
    } <= vit.no_weight_decay()


def test_ported_backbones_register_build_in_training_mode_and_unregister(tiny_model, tmp_path):
    from foveal.nn import create_backbone, list_backbones
    from foveal.nn.ported import register_ported_backbone, unregister_ported_backbone

    spec = {
        "kind": "hf",
        "folder": str(tiny_model("resnet")),
        "task": "image-classification",
        "image_size": 32,
    }
    register_ported_backbone("unit_res", spec)
    backbone = create_backbone("unit_res", img_size=32, drop_path_rate=0.1)
    # Lightning keeps the modes it finds: an eval-mode HF model would fine-tune with frozen BatchNorm.
    assert all(m.training for m in backbone.modules())
    unregister_ported_backbone("unit_res")
    assert "unit_res" not in list_backbones()
    unregister_ported_backbone("vit_t")  # built-ins are never removed
    assert "vit_t" in list_backbones()
    with pytest.raises(ValueError, match="unknown ported kind"):
        register_ported_backbone("unit_bad", {"kind": "onnx"})


def test_with_defaults_derives_a_schema_and_keeps_the_base():
    from foveal.networks.classification.config import ClassificationConfig
    from foveal.networks.ported import with_defaults
    from foveal.spec import build_config, field_meta

    derived = with_defaults(
        ClassificationConfig, {"model.backbone.type": "my_net", "dataset.augmentation.mean": [0.5] * 3}
    )
    cfg = build_config(derived, {})
    assert cfg.model.backbone.type == "my_net" and cfg.dataset.augmentation.mean == [0.5] * 3
    assert cfg.dataset.img_size == 224 and cfg.train.optim.lr == 6e-5  # TAO's defaults
    assert ClassificationConfig().model.backbone.type == "fan_small_12_p4_hybrid"
    import dataclasses

    lr = next(f for f in dataclasses.fields(type(cfg.model.backbone)) if f.name == "type")
    assert field_meta(lr)["popular"] is True
    with pytest.raises(KeyError, match="model.nope"):
        with_defaults(ClassificationConfig, {"model.nope": 1})


def test_workspace_from_argv():
    from foveal.cli.main import _workspace_from_argv

    assert _workspace_from_argv(["-w", "a", "models"]) == "a"
    assert _workspace_from_argv(["port", "hf", "x", "--workspace", "b"]) == "b"
    assert _workspace_from_argv(["--workspace=c", "models"]) == "c"
    assert _workspace_from_argv(["models", "--", "-w", "d"]) is None


class _Cancelling(torch.nn.Module):
    """(x + 1e4) - 1e4: exact in float64, ~1e-3 rounding in float32 (an ill-conditioned model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1e4) - 1e4


@pytest.mark.parametrize(
    ("ort_optimised", "ort_plain", "verdict"),
    [
        ("same", None, None),
        ("off_by_half", "same", "ort_optimiser"),  # BiT's Pad-into-MaxPool fusion: the file is right
        ("float64", "float64", "fp32_conditioning"),  # ORT nearer the truth than PyTorch fp32
        ("off_by_half", "off_by_half", "export"),
    ],
)
def test_a_parity_failure_is_diagnosed_before_the_export_is_blamed(
    monkeypatch, tmp_path, ort_optimised, ort_plain, verdict
):
    from foveal.port import verify

    module = _Cancelling()
    x = torch.rand(2, 64) * 0.37
    with torch.no_grad():
        fp32 = module(x).numpy()
    assert np.abs(fp32 - x.double().numpy()).max() > 1e-4  # the premise: fp32 alone misses 1e-4
    outputs = {"same": fp32, "off_by_half": fp32 + 0.5, "float64": x.double().numpy().astype(np.float32)}
    calls = []

    def fake_outputs(onnx_file: Path, array: np.ndarray, optimise: bool) -> list[np.ndarray]:
        calls.append(optimise)
        return [outputs[ort_optimised if optimise else ort_plain]]  # the session's outputs, in order

    monkeypatch.setattr(verify, "_ort_outputs", fake_outputs)
    figures, got = verify.check_graph("features", tmp_path / "m.onnx", module, x)
    assert got == verdict
    assert calls == ([True] if ort_plain is None else [True, False])  # off only after a failure
    if verdict in ("fp32_conditioning", "export"):
        assert figures["torch_features_fp64_error"] > 1e-4


def test_hub_id_that_cannot_be_fetched_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub

    from foveal.jobs.workspace import Workspace
    from foveal.port.pipeline import resolve_source

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(PortSourceError, match=r"org/model: not a local folder.*couldn't connect") as info:
        resolve_source("org/model", Workspace(tmp_path / "ws"))
    assert "\n" not in str(info.value)
    with pytest.raises(PortSourceError, match="no such folder"):
        resolve_source("not a hub id", Workspace(tmp_path / "ws"))


def test_user_data_is_cut_to_a_few_images_per_class(tmp_path):
    from foveal.data.synthetic import make_demo_dataset
    from foveal.errors import DatasetError
    from foveal.port.verify import subset_data

    paths = make_demo_dataset(
        tmp_path / "d", num_train=30, num_val=0, num_test=0, image_size=16, num_classes=3, archives=False,
        num_workers=1,
    )  # fmt: skip
    out = subset_data(paths["labeled_train"], tmp_path / "subset" / "labeled_train", per_class=4)
    counts = {p.name: len(list(p.iterdir())) for p in out.iterdir()}
    assert len(counts) == 3 and all(c == 4 for c in counts.values())
    with pytest.raises(DatasetError, match="--data is not a folder"):
        subset_data(tmp_path / "nope", tmp_path / "s2")
    (tmp_path / "one" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="found 1 class subfolders"):
        subset_data(tmp_path / "one", tmp_path / "s3")
