"""foveal.secrets: fingerprints instead of keys, authenticated encryption of model files."""

from __future__ import annotations

import pytest

from foveal import secrets
from foveal.errors import EncryptionKeyError
from foveal.jobs.model import spec_hash
from foveal.networks.classification.config import ClassificationConfig
from foveal.spec import to_dict

pytestmark = pytest.mark.unit

KEY = "correct horse battery staple 42"


def test_a_fingerprint_matches_its_key_only_and_never_holds_it():
    stored = secrets.fingerprint(KEY)
    assert secrets.is_fingerprint(stored) and KEY not in stored
    assert secrets.matches(KEY, stored) and not secrets.matches(KEY + "!", stored)
    assert secrets.fingerprint(KEY) != stored  # salted: two fingerprints of one key differ
    assert not secrets.matches(KEY, "scrypt$zz$yy")


def test_specs_written_anywhere_carry_the_fingerprint_and_hash_alike():
    cfg = ClassificationConfig()
    cfg.encryption_key = KEY
    data = to_dict(cfg)
    assert secrets.matches(KEY, data["encryption_key"]) and KEY not in str(data)
    assert to_dict(cfg, with_secrets=True)["encryption_key"] == KEY
    other = dict(data, encryption_key=secrets.fingerprint("another key"))
    assert spec_hash(data) == spec_hash(other) == spec_hash(dict(data, encryption_key=KEY))
    assert spec_hash(dict(data, encryption_key=None)) != spec_hash(data)
    assert secrets.redact_overrides(["a=1", f"encryption_key={KEY}"]) == ["a=1", "encryption_key=<encryption key set>"]


def test_tracking_uri_credentials_never_reach_a_written_spec(tmp_path):
    from foveal.spec import save_spec

    cfg = ClassificationConfig()
    cfg.mlflow.tracking_uri = "postgresql://user:hunter2@db.example:5432/mlflow"
    assert to_dict(cfg)["mlflow"]["tracking_uri"] == "postgresql://***@db.example:5432/mlflow"
    assert "hunter2" not in save_spec(cfg, tmp_path / "experiment.yaml").read_text()
    assert to_dict(cfg, with_secrets=True)["mlflow"]["tracking_uri"].endswith("hunter2@db.example:5432/mlflow")
    cfg.mlflow.tracking_uri = "http://mlflow.example:5000"  # nothing to mask
    assert to_dict(cfg)["mlflow"]["tracking_uri"] == "http://mlflow.example:5000"


def test_the_key_comes_from_the_spec_else_the_environment_and_must_match_a_fingerprint(monkeypatch):
    monkeypatch.delenv(secrets.ENV_KEY, raising=False)
    assert secrets.key_from(None) is None and secrets.key_from(KEY) == KEY
    stored = secrets.fingerprint(KEY)
    with pytest.raises(EncryptionKeyError, match="set FOVEAL_ENCRYPTION_KEY"):
        secrets.key_from(stored, "job x")
    monkeypatch.setenv(secrets.ENV_KEY, "wrong")
    with pytest.raises(EncryptionKeyError, match="is not the encryption key job x was written with"):
        secrets.key_from(stored, "job x")
    monkeypatch.setenv(secrets.ENV_KEY, KEY)
    assert secrets.key_from(stored) == KEY and secrets.key_from(None) == KEY
    with pytest.raises(EncryptionKeyError, match="holds a fingerprint"):
        secrets.check_key(stored)


def test_files_are_authenticated_encryption_with_a_fresh_salt_and_nonce(tmp_path, monkeypatch):
    monkeypatch.delenv(secrets.ENV_KEY, raising=False)
    plain = b"weights" * 1000
    one, two = secrets.encrypt_bytes(plain, KEY), secrets.encrypt_bytes(plain, KEY)
    assert one != two and one.startswith(secrets.MAGIC) and plain not in one
    assert secrets.decrypt_bytes(one, KEY) == plain
    with pytest.raises(EncryptionKeyError, match="does not open with this encryption key"):
        secrets.decrypt_bytes(one, "other key")
    tampered = bytearray(one)
    tampered[-20] ^= 1
    with pytest.raises(EncryptionKeyError, match="does not open"):
        secrets.decrypt_bytes(bytes(tampered), KEY)
    with pytest.raises(EncryptionKeyError, match="truncated"):
        secrets.decrypt_bytes(one[: len(secrets.MAGIC) + 30], KEY)
    path = tmp_path / "m.pth"
    path.write_bytes(one)
    with pytest.raises(EncryptionKeyError, match=r"m.pth is encrypted; set encryption_key"):
        secrets.read_model_bytes(path)
    with secrets.key_scope(KEY):
        assert secrets.read_model_bytes(path) == plain and secrets.seal(b"x") != b"x"
    assert secrets.seal(b"x") == b"x" and secrets.active_key() is None


def test_checkpoints_saved_under_a_key_load_with_it_only(tmp_path, monkeypatch):
    monkeypatch.delenv(secrets.ENV_KEY, raising=False)
    import torch

    from foveal.engine import load_checkpoint, save_weights_only

    with secrets.key_scope(KEY):
        path = save_weights_only({"w": torch.ones(3)}, tmp_path / "s.pth", network="n", config={}, kind="student")
        assert load_checkpoint(path)["state_dict"]["w"].sum() == 3
    assert secrets.is_encrypted(path)
    with pytest.raises(Exception):  # noqa: B017 - torch itself cannot read it
        torch.load(path, weights_only=True)
    with pytest.raises(EncryptionKeyError, match="s.pth is encrypted"):
        load_checkpoint(path)
    with secrets.key_scope("not it"), pytest.raises(EncryptionKeyError, match="does not open"):
        load_checkpoint(path)
