"""encryption_key end to end on real tiny runs: mae pretrain -> finetune -> evaluate -> export with a
key writes no key anywhere, encrypts every model file, refuses a missing or wrong key in one line,
and gives the numbers of the same run without a key."""

from __future__ import annotations

import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from foveal import secrets
from foveal.cli.main import main
from foveal.data.synthetic import make_demo_dataset
from foveal.errors import EncryptionKeyError
from foveal.jobs import JobStatus, Workspace
from foveal.jobs.lifecycle import prepare_job, run_job
from foveal.platforms.local import launch_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "networks"))
from tiny_jobs import MAE, tiny_backbones  # noqa: E402

pytestmark = pytest.mark.integration

KEY = "k3y-Only-In-Memory-9f2c"
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("shapes"),
        num_train=32,
        num_val=16,
        num_test=16,
        image_size=32,
        num_classes=2,
        archives=False,
    )


def _chain(ws: Workspace, data, *key: str) -> dict:
    """pretrain -> finetune -> evaluate -> export (the demo's chain) with optional key overrides."""
    pre = run_job(
        "mae",
        "train",
        workspace=ws,
        overrides=[*MAE, f"dataset.train_data_sources={data['images_train']}", *key],
    )
    fin = run_job(
        "mae",
        "train",
        parent_id=pre.id,
        workspace=ws,
        overrides=[
            *MAE,
            "train.stage=finetune",
            "dataset.augmentation.mixup=0",
            "dataset.augmentation.cutmix=0",
            f"dataset.train_data_sources={data['labeled_train']}",
            *key,
        ],
    )
    ev = run_job(
        "mae",
        "evaluate",
        parent_id=fin.id,
        workspace=ws,
        overrides=[f"dataset.val_data_sources={data['labeled_test']}", *key],
    )
    ex = run_job("mae", "export", parent_id=fin.id, workspace=ws, overrides=[*key])
    return {"pretrain": pre, "finetune": fin, "evaluate": ev, "export": ex}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp, tiny_backbones():
        mp.delenv(secrets.ENV_KEY, raising=False)
        keyed_ws = Workspace(tmp_path_factory.mktemp("keyed"))
        keyed = _chain(keyed_ws, data, f"encryption_key={KEY}")
        plain = _chain(Workspace(tmp_path_factory.mktemp("plain")), data)
        yield keyed_ws, keyed, plain


def test_no_file_of_the_workspace_holds_the_key(runs):
    ws, keyed, _ = runs
    for job in keyed.values():
        assert job.status is JobStatus.DONE
        assert secrets.matches(KEY, job.spec["encryption_key"])
    needle = KEY.encode()
    files = [p for p in ws.root.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.name == "registry.sqlite" for p in files)
    assert [str(p) for p in files if needle in p.read_bytes()] == []


def test_every_model_file_is_encrypted_and_opens_with_the_key_only(runs):
    _, keyed, _ = runs
    models = [p for j in ("pretrain", "finetune") for p in Path(keyed[j].results_dir).glob("*.pth")]
    onnx_file = Path(keyed["export"].artifacts["onnx"])
    assert models and all(secrets.is_encrypted(p) for p in [*models, onnx_file])
    for path in models:
        with pytest.raises(Exception):  # noqa: B017 - neither torch nor ONNX Runtime can read them
            torch.load(path, weights_only=True)
    with pytest.raises(Exception):  # noqa: B017
        ort.InferenceSession(str(onnx_file))
    plain = secrets.decrypt_bytes(onnx_file.read_bytes(), KEY, onnx_file)
    assert ort.InferenceSession(plain).get_outputs()[0].name == "logits"


def test_the_same_numbers_as_without_a_key(runs):
    _, keyed, plain = runs
    assert keyed["evaluate"].kpis == pytest.approx(plain["evaluate"].kpis)
    assert keyed["finetune"].kpis == pytest.approx(plain["finetune"].kpis)


def test_a_missing_or_wrong_key_is_one_line_before_the_job(runs, data, monkeypatch, capsys):
    ws, keyed, _ = runs
    monkeypatch.delenv(secrets.ENV_KEY, raising=False)
    args = [
        "-w",
        str(ws.root),
        "mae",
        "evaluate",
        "--parent",
        keyed["finetune"].id,
        f"dataset.val_data_sources={data['labeled_test']}",
    ]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: job {keyed['finetune'].id} wrote its model files encrypted; set encryption_key "
        "(or FOVEAL_ENCRYPTION_KEY) to its key"
    )
    assert main([*args, "encryption_key=not-the-key"]) == 2
    assert "is not the key job" in capsys.readouterr().err
    # a model file named directly, with no parent to check against, is refused when read
    direct = [
        "-w",
        str(ws.root),
        "mae",
        "export",
        f"export.checkpoint={keyed['finetune'].artifacts['checkpoint']}",
    ]
    assert main(direct) == 2
    assert "is encrypted; set encryption_key in the spec or FOVEAL_ENCRYPTION_KEY" in capsys.readouterr().err


def test_the_key_from_the_environment_reaches_a_local_subprocess_job(data, tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    monkeypatch.setenv(secrets.ENV_KEY, KEY)  # a key from the environment, not the spec
    prepared = prepare_job(
        "classification",
        "train",
        workspace=ws,
        overrides=[
            "model.backbone.type=vit_tiny_patch16",
            "dataset.img_size=32",
            "dataset.num_classes=0",
            "dataset.workers=0",
            "train.num_epochs=1",
            f"dataset.train_dataset.images_dir={data['labeled_train']}",
        ],
    )
    assert prepared.encryption_key == KEY and secrets.matches(KEY, prepared.job.spec["encryption_key"])
    monkeypatch.delenv(secrets.ENV_KEY)  # the child gets it from launch_job, in its environment only
    handle = launch_job(prepared, ws)
    assert handle.wait(timeout=300) == 0
    results = Path(prepared.job.results_dir)
    assert secrets.is_encrypted(next(results.glob("model_epoch_*.pth")))
    assert [p for p in ws.root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()] == []


def test_decrypt_gives_the_plain_file_for_other_tools(runs, tmp_path, monkeypatch, capsys):
    _, keyed, _ = runs
    source = Path(keyed["export"].artifacts["onnx"])
    monkeypatch.setenv(secrets.ENV_KEY, KEY)
    assert main(["decrypt", str(source), "-o", str(tmp_path / "plain.onnx")]) == 0
    assert ort.InferenceSession(str(tmp_path / "plain.onnx")).get_outputs()[0].name == "logits"
    assert main(["decrypt", str(tmp_path / "plain.onnx"), "-o", str(tmp_path / "x")]) == 2
    monkeypatch.setenv(secrets.ENV_KEY, "wrong")
    assert main(["decrypt", str(source), "-o", str(tmp_path / "again.onnx")]) == 2
    assert "does not open with this encryption key" in capsys.readouterr().err
    with pytest.raises(EncryptionKeyError):
        secrets.decrypt_bytes(source.read_bytes(), "wrong", source)
