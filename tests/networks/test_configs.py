"""The three built-in network schemas: metadata is complete and consistent, resolve() catches
cross-field mistakes all at once."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from foveal.errors import SpecError
from foveal.networks.registry import ACTIONS, get_network
from foveal.spec.fields import field_default, field_meta, is_section_type, resolved_fields, unwrap_optional

pytestmark = pytest.mark.unit

NETWORKS = ("classification", "mae", "nvdinov2")


def walk(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any, dict]]:
    """Every (dotted key, field, type, metadata) of a spec class, sections included."""
    out = []
    for f, tp in resolved_fields(cls):
        key = f"{prefix}{f.name}"
        inner, _ = unwrap_optional(tp)
        out.append((key, f, tp, field_meta(f)))
        if is_section_type(inner):
            out.extend(walk(inner, key + "."))
    return out


def leaves(cls: type) -> dict[str, tuple[dataclasses.Field, dict]]:
    return {key: (f, meta) for key, f, tp, meta in walk(cls) if not is_section_type(unwrap_optional(tp)[0])}


def get_key(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def issue_keys(excinfo: pytest.ExceptionInfo[SpecError]) -> set[str]:
    return {issue.key for issue in excinfo.value.issues}


@pytest.fixture(params=NETWORKS)
def network(request):
    return get_network(request.param)


# ------------------------------------------------------------------------------ schema metadata


def test_defaults_instantiate_and_resolve(network):
    cfg = network.config_cls()
    resolved = network.resolve(cfg)
    assert type(resolved) is network.config_cls
    assert network.resolve(resolved) == resolved  # resolving twice changes nothing


def test_top_level_sections(network):
    names = {f.name for f in dataclasses.fields(network.config_cls)}
    expected = {
        "results_dir",
        "encryption_key",
        "model",
        "dataset",
        "train",
        "evaluate",
        "inference",
        "export",
    }
    assert expected | {"gen_trt_engine"} <= names
    cfg = network.config_cls()
    assert cfg.results_dir is None and cfg.encryption_key is None


def test_every_field_has_a_description(network):
    missing = [key for key, _, _, meta in walk(network.config_cls) if not meta["description"].strip()]
    assert missing == []


def test_valid_options_contain_the_default(network):
    for key, (f, meta) in leaves(network.config_cls).items():
        default = field_default(f)
        if meta.get("valid_options") is not None and default is not None:
            assert default in meta["valid_options"], key


def test_defaults_within_bounds(network):
    for key, (f, meta) in leaves(network.config_cls).items():
        default = field_default(f)
        values = default if isinstance(default, list) else [default]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if meta.get("valid_min") is not None:
                assert value >= meta["valid_min"], key
            if meta.get("valid_max") is not None:
                assert value <= meta["valid_max"], key


def test_required_names_real_actions(network):
    for key, (_, meta) in leaves(network.config_cls).items():
        required = meta["required"]
        assert isinstance(required, bool) or set(required) <= set(ACTIONS), key


def test_automl_fields_are_numeric_and_bounded(network):
    for key, (f, meta) in leaves(network.config_cls).items():
        if meta.get("automl_enabled"):
            # numeric, or empty where the value is derived when not set (nvdinov2's peak LR rule)
            assert isinstance(field_default(f), (int, float)) or (
                field_default(f) is None and meta["valid_min"] is not None and meta["valid_max"] is not None
            ), key
            if isinstance(field_default(f), bool):
                continue  # a switch: the search draws false / true
            assert meta["valid_min"] is not None and meta["valid_max"] is not None, key
            assert meta["valid_min"] < meta["valid_max"], key


def test_popular_fields_exist(network):
    assert any(meta.get("popular") for _, meta in leaves(network.config_cls).values())


# required by a cross-field check rather than the schema (either of two keys will do)
REQUIRED_BY_A_RULE = {("classification", "evaluate", "dataset.val_dataset.images_dir")}  # or TAO-Deploy's test_dataset


def test_handoff_and_dataset_keys_exist(network):
    keys = leaves(network.config_cls)
    for action, rules in network.handoff.items():
        assert action in ACTIONS
        for key in rules:
            assert key in keys, f"{network.name}.{action}: {key}"
    for action, needs in network.metadata.dataset_requirements.items():
        for need in needs:
            assert need.key in keys, need.key
            required = keys[need.key][1]["required"]
            if need.required and (network.name, action, need.key) not in REQUIRED_BY_A_RULE:
                assert required is True or action in required, f"{need.key} should be required for {action}"
    for rule in network.start_from:
        assert rule.key in keys, rule.key
    assert network.start_key in keys


def test_action_sections_exist(network):
    names = {f.name for f in dataclasses.fields(network.config_cls)}
    for action, sections in network.action_sections.items():
        assert action in ACTIONS
        assert set(sections) <= names


def test_metadata(network):
    meta = network.metadata
    assert meta.task and meta.monitoring.metric and meta.eval_dataset in ("required", "optional")
    assert meta.monitoring.mode in ("min", "max") and meta.image.image == "foveal-pytorch"
    assert meta.default_pretrained_checkpoint is None and meta.ported is None


def test_package_import_does_not_import_torch():
    code = (
        "import sys\n"
        "from foveal.networks.registry import list_networks\n"
        "assert len(list_networks()) >= 3\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ TAO keys


@pytest.mark.parametrize(
    "name, key, default",
    [
        ("nvdinov2", "model.backbone.teacher_type", "vit_l"),
        ("nvdinov2", "model.backbone.img_size", 518),
        ("nvdinov2", "model.backbone.patch_size", 14),
        ("nvdinov2", "model.head.bottleneck_dim", 384),
        ("nvdinov2", "model.distill.pretrained_non_distill_pl_model_path", None),
        ("nvdinov2", "dataset.transform.local_crops_size", 98),
        ("nvdinov2", "dataset.transform.global_crops_scale", [0.32, 1.0]),
        ("nvdinov2", "train.num_prototypes", 131072),
        ("nvdinov2", "train.schedulers.last_layer_learning_rate.freeze_steps", 1250),
        ("nvdinov2", "train.schedulers.teacher_temperature.val_start", 0.04),
        ("nvdinov2", "train.schedulers.momentum.val_base", 0.994),
        ("nvdinov2", "train.loss.koleo_loss_weight", 0.1),
        ("nvdinov2", "train.masking.mask_sample_probability", 0.5),
        ("nvdinov2", "train.optim.optim", "adamw"),
        ("mae", "model.arch", "convnextv2_base"),
        ("mae", "model.decoder_embed_dim", 512),
        ("mae", "dataset.train_data_sources", None),
        ("mae", "dataset.num_workers_per_gpu", 2),
        ("mae", "dataset.augmentation.mixup_mode", "batch"),
        ("mae", "train.stage", "pretrain"),
        ("mae", "train.mask_ratio", 0.75),
        ("mae", "train.norm_pix_loss", True),
        ("mae", "train.optim.lr_scheduler", "MultiStep"),
        ("mae", "train.optim.milestones", [88, 96]),
        # classification = TAO's classification_pyt (tao-core default_config.py)
        ("classification", "model.backbone.type", "fan_small_12_p4_hybrid"),
        ("classification", "model.head.type", "TAOLinearClsHead"),
        ("classification", "model.head.loss.label_smooth_val", 0.0),
        ("classification", "dataset.val_dataset.images_dir", None),
        ("classification", "dataset.img_size", 224),
        ("classification", "dataset.num_classes", 20),
        ("classification", "dataset.augmentation.random_flip.vflip_probability", 0.5),
        ("classification", "dataset.augmentation.mixup_cutmix", False),
        ("classification", "train.optim.optim", "adamw"),
        ("classification", "train.optim.lr", 6e-5),
        ("classification", "train.optim.policy", "linear"),
        ("classification", "train.optim.monitor_name", "val_loss"),
        ("classification", "train.ema_decay", 0.998),
        ("classification", "train.clip_grad_norm", 2.0),
    ],
)
def test_tao_keys_and_defaults(name, key, default):
    assert get_key(get_network(name).config_cls(), key) == default


@pytest.mark.parametrize(
    "name, keys",
    [
        (
            "mae",
            (
                "train.optim.lr",
                "train.optim.weight_decay",
                "train.optim.layer_decay",
                "train.optim.warmup_epochs",
                "train.mask_ratio",
            ),
        ),
        (
            "classification",
            (
                "train.optim.lr",
                "train.optim.weight_decay",
                "train.optim.layer_decay",
                "train.optim.warmup_epochs",
                "model.head.loss.label_smooth_val",
                "dataset.augmentation.mixup_cutmix",
            ),
        ),
    ],
)
def test_automl_enabled_fields(name, keys):
    fields = leaves(get_network(name).config_cls)
    for key in keys:
        assert fields[key][1]["automl_enabled"], key


def test_checkpoint_fields_are_required_for_their_action(network):
    fields = leaves(network.config_cls)
    for action in ("evaluate", "inference", "export"):
        assert action in fields[f"{action}.checkpoint"][1]["required"]
    assert "gen_trt_engine" in fields["gen_trt_engine.onnx_file"][1]["required"]


# ------------------------------------------------------------------------------ resolve: nvdinov2


def test_nvdinov2_resolve_reports_every_problem():
    from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve

    cfg = NVDINOv2Config()
    cfg.model.backbone.patch_size = 16
    cfg.model.backbone.img_size = 520  # 520 % 16 = 8
    cfg.model.backbone.student_type = "vit_s"  # teacher stays vit_l, no distillation
    cfg.dataset.transform.global_crops_size = 200  # 200 % 16 = 8
    cfg.dataset.transform.local_crops_size = 100  # 100 % 16 = 4
    cfg.dataset.transform.local_crops_scale = [0.4, 0.1]
    cfg.train.masking.mask_ratio_min = 0.6
    cfg.train.schedulers.teacher_temperature.warm_up_steps = 40_000  # past max_decay_steps=37500
    cfg.export.input_width = 100  # checked against the checkpoint's patch size at export, not here
    with pytest.raises(SpecError) as excinfo:
        resolve(cfg)
    assert issue_keys(excinfo) == {
        "model.backbone.img_size",
        "model.backbone.student_type",
        "dataset.transform.global_crops_size",
        "dataset.transform.local_crops_size",
        "dataset.transform.local_crops_scale",
        "train.masking.mask_ratio_min",
        "train.schedulers.teacher_temperature.warm_up_steps",
    }
    crop_issue = next(i for i in excinfo.value.issues if i.key == "dataset.transform.global_crops_size")
    assert "192" in crop_issue.suggestion and "208" in crop_issue.suggestion


def test_nvdinov2_distillation_allows_different_sizes():
    from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve

    cfg = NVDINOv2Config()
    cfg.model.backbone.student_type = "vit_b"
    cfg.model.distill.enable = True
    assert resolve(cfg).model.backbone.student_type == "vit_b"


def test_nvdinov2_local_crops_larger_than_global():
    from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve

    cfg = NVDINOv2Config()
    cfg.dataset.transform.local_crops_size = 252
    with pytest.raises(SpecError) as excinfo:
        resolve(cfg)
    assert issue_keys(excinfo) == {"dataset.transform.local_crops_size"}


def test_nvdinov2_resolve_derives_lr_and_leaves_export_size_to_the_checkpoint():
    from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve

    cfg = NVDINOv2Config()
    cfg.dataset.batch_size = 64
    cfg.train.num_gpus = 4
    cfg.train.schedulers.last_layer_learning_rate.val_base = 1e-3
    out = resolve(cfg)
    assert out.train.schedulers.learning_rate.val_base == pytest.approx(2e-4 * (256 / 1024) ** 0.5)
    assert out.train.schedulers.last_layer_learning_rate.val_base == 1e-3  # explicit value kept
    assert (out.export.input_width, out.export.input_height) == (None, None)
    assert out.gen_trt_engine.input_width is None
    assert cfg.train.schedulers.learning_rate.val_base is None  # input untouched
    assert cfg.export.input_width is None


# ------------------------------------------------------------------------------ resolve: mae


def test_mae_resolve_reports_every_problem():
    from foveal.networks.mae.config import MAEConfig, resolve

    cfg = MAEConfig()
    cfg.dataset.augmentation.input_size = 200  # convnextv2 needs a multiple of 32
    cfg.dataset.augmentation.min_scale = 0.9
    cfg.dataset.augmentation.max_scale = 0.5
    cfg.dataset.augmentation.min_ratio = 2.0
    cfg.dataset.augmentation.std = [0.2, 0.2]
    cfg.train.optim.milestones = [96, 88]  # MultiStep is the default
    with pytest.raises(SpecError) as excinfo:
        resolve(cfg)
    assert issue_keys(excinfo) == {
        "dataset.augmentation.input_size",
        "dataset.augmentation.min_scale",
        "dataset.augmentation.min_ratio",
        "dataset.augmentation.std",
        "train.optim.milestones",
    }


@pytest.mark.parametrize(
    "arch, size, ok",
    [
        ("vit_base_patch16", 208, True),
        ("vit_huge_patch14", 208, False),
        ("convnextv2_atto", 224, True),
        ("convnextv2_atto", 208, False),
    ],
)
def test_mae_input_size_follows_arch(arch, size, ok):
    from foveal.networks.mae.config import MAEConfig, resolve

    cfg = MAEConfig()
    cfg.model.arch = arch
    cfg.dataset.augmentation.input_size = size
    if ok:
        resolve(cfg)
    else:
        with pytest.raises(SpecError, match="dataset.augmentation.input_size"):
            resolve(cfg)


def test_mae_cosine_warmup_must_leave_epochs():
    from foveal.networks.mae.config import MAEConfig, resolve

    cfg = MAEConfig()
    cfg.train.optim.lr_scheduler = "cosine"
    cfg.train.optim.warmup_epochs = cfg.train.num_epochs
    with pytest.raises(SpecError) as excinfo:
        resolve(cfg)
    assert issue_keys(excinfo) == {"train.optim.warmup_epochs"}


# ------------------------------------------------------------------------------ resolve: classification


def test_classification_resolve_reports_every_problem():
    from foveal.networks.classification.config import ClassificationConfig
    from foveal.networks.classification.resolve import resolve

    cfg = ClassificationConfig()
    cfg.model.backbone.type = "convnextv2_atto"
    cfg.model.global_pool = "cls"
    cfg.dataset.num_classes = 1
    cfg.model.backbone.freeze_blocks = [0, 0]
    cfg.dataset.img_size = 100  # not a multiple of 32
    cfg.dataset.augmentation.with_scale_random_crop.scale_range = [1.2, 0.8]
    cfg.dataset.augmentation.mean = [0.5]
    cfg.train.optim.warmup_epochs = 12  # num_epochs defaults to 10
    cfg.train.optim.monitor_name = "val_f1"
    with pytest.raises(SpecError) as excinfo:
        resolve(cfg)
    assert issue_keys(excinfo) == {
        "model.global_pool",
        "dataset.num_classes",
        "model.backbone.freeze_blocks",
        "dataset.img_size",
        "dataset.augmentation.with_scale_random_crop.scale_range",
        "dataset.augmentation.mean",
        "train.optim.warmup_epochs",
        "train.optim.monitor_name",
    }
    assert len(str(excinfo.value).splitlines()) == 8


@pytest.mark.parametrize(
    "backbone, pool", [("vit_tiny_patch16", "cls"), ("vit_s", "cls"), ("convnextv2_nano", "avg")]
)
def test_classification_global_pool_follows_backbone(backbone, pool):
    from foveal.networks.classification.config import ClassificationConfig
    from foveal.networks.classification.resolve import resolve

    cfg = ClassificationConfig()
    cfg.model.backbone.type = backbone
    assert resolve(cfg).model.global_pool == pool
    assert cfg.model.global_pool is None


def test_classification_takes_registered_backbone_names_only(monkeypatch):
    from foveal.networks.classification.config import ClassificationConfig
    from foveal.networks.classification.resolve import resolve
    from foveal.nn import registry

    cfg = ClassificationConfig()
    cfg.model.backbone.type = "hf_some_ported_model"
    cfg.dataset.img_size = 250
    with pytest.raises(SpecError) as caught:
        resolve(cfg, "train")
    (issue,) = caught.value.issues
    assert issue.key == "model.backbone.type" and "unknown backbone 'hf_some_ported_model'" in issue.message
    assert "vit_tiny_patch16" in issue.suggestion and "convnextv2_atto" in issue.suggestion
    # a ported backbone is registered by name (its network's resolve step registers it first)
    monkeypatch.setitem(registry._BACKBONES, "hf_some_ported_model", lambda **kw: None)
    assert resolve(cfg, "train").model.global_pool == "cls"


def test_a_close_typo_gets_the_nearest_backbone():
    from foveal.networks.classification.config import ClassificationConfig
    from foveal.networks.classification.resolve import resolve

    cfg = ClassificationConfig()
    cfg.model.backbone.type = "vit_tiny_pach16"
    with pytest.raises(SpecError, match="did you mean vit_tiny_patch16"):
        resolve(cfg)


def test_classification_patch_size_sets_the_input_stride_and_reaches_the_vit():
    from foveal.networks.classification.config import ClassificationConfig
    from foveal.networks.classification.model import build_classifier
    from foveal.networks.classification.resolve import resolve

    cfg = ClassificationConfig()
    cfg.model.backbone.type = "vit_t"  # patch 14 by default: 64 px is not a multiple
    cfg.dataset.img_size = 64
    with pytest.raises(SpecError) as excinfo:
        resolve(cfg)
    assert issue_keys(excinfo) == {"dataset.img_size"}
    cfg.model.backbone.patch_size = 16
    model = build_classifier(resolve(cfg).model, num_classes=3, img_size=64)
    assert model.backbone.patch_size == 16 and model.backbone.img_size == (64, 64)
    cfg.model.backbone.type = "convnextv2_atto"
    with pytest.raises(SpecError) as excinfo:
        resolve(cfg)
    assert "model.backbone.patch_size" in issue_keys(excinfo)


def test_nvdinov2_small_patches_for_cpu_sized_runs():
    from foveal.networks.nvdinov2.config import NVDINOv2Config, resolve
    from foveal.spec import build_config

    raw = {
        "model": {
            "backbone": {"patch_size": 4, "img_size": 32, "teacher_type": "vit_t", "student_type": "vit_t"}
        },
        "dataset": {"transform": {"global_crops_size": 32, "local_crops_size": 16}},
    }
    assert resolve(build_config(NVDINOv2Config, raw)).model.backbone.patch_size == 4
    raw["dataset"]["transform"]["local_crops_size"] = 18  # 18 % 4 = 2
    with pytest.raises(SpecError) as excinfo:
        resolve(build_config(NVDINOv2Config, raw))
    assert issue_keys(excinfo) == {"dataset.transform.local_crops_size"}
    raw["model"]["backbone"]["patch_size"] = 12
    with pytest.raises(SpecError, match=r"model\.backbone\.patch_size.*4, 8, 14, 16"):
        build_config(NVDINOv2Config, raw)
