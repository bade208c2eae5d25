"""The encryption key: never on disk in plain text, and the model files it protects.

``encryption_key`` (TAO's spec key) or ``$FOVEAL_ENCRYPTION_KEY`` names a key. Foveal never
writes it: specs on disk (``experiment.yaml``, the job registry, checkpoints' embedded configs)
carry a salted scrypt fingerprint instead (``scrypt$<salt>$<digest>``), which lets a later job
check that its key is the same without storing it. While an action runs, the key lives only in
memory (:func:`key_scope`), and every model file Foveal writes (full checkpoints, weights-only
handoff files, ONNX exports) is encrypted at rest with AES-256-GCM (authenticated), the key
derived with scrypt from the key and a per-file random salt, with a per-file random nonce.
Readers decrypt transparently; a missing or wrong key is one :class:`EncryptionKeyError` line.

File layout: ``MAGIC (12 bytes) | salt (16) | nonce (12) | ciphertext + tag (16)``; the magic is
also the authenticated associated data. ``foveal decrypt FILE -o OUT`` writes the plain file.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import hmac
import os
import re
import secrets as _random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from foveal.errors import EncryptionKeyError

ENV_KEY = "FOVEAL_ENCRYPTION_KEY"
SECRET_KEYS = ("encryption_key",)  # top-level spec keys that hold a secret
# (section, key) of spec URIs whose user:password part is masked wherever the spec is written
URI_KEYS = (("mlflow", "tracking_uri"),)
_URI_CREDENTIALS = re.compile(r"//[^/@]+@")
MAGIC = b"FOVEAL-ENC1\n"
_SALT, _NONCE, _TAG = 16, 12, 16
_FINGERPRINT_PREFIX = "scrypt$"
# scrypt cost: N=2^14, r=8 (16 MiB, ~50 ms): cheap per file, expensive per guess.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
HASH_PLACEHOLDER = "<encryption key set>"

_ACTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("foveal_encryption_key", default=None)


# ------------------------------------------------------------------------------ fingerprints


def _scrypt(key: str, salt: bytes, length: int = 32) -> bytes:
    return hashlib.scrypt(key.encode("utf-8"), salt=salt, dklen=length, maxmem=64 * 1024 * 1024, **_SCRYPT)


def is_fingerprint(value: object) -> bool:
    return isinstance(value, str) and value.startswith(_FINGERPRINT_PREFIX) and value.count("$") == 2


def fingerprint(key: str, salt: bytes | None = None) -> str:
    """A salted scrypt fingerprint of ``key``: safe to store, useless to recover the key."""
    salt = salt if salt is not None else _random.token_bytes(_SALT)
    return f"{_FINGERPRINT_PREFIX}{salt.hex()}${_scrypt(key, salt).hex()}"


def matches(key: str, stored: str) -> bool:
    """Whether ``key`` is the key ``stored`` (a fingerprint) was made from."""
    try:
        _, salt, digest = stored.split("$")
        return hmac.compare_digest(_scrypt(key, bytes.fromhex(salt)).hex(), digest)
    except (ValueError, TypeError):
        return False


def check_key(key: str | None) -> str | None:
    """``key`` if usable (``None`` for no key); a fingerprint passed as a key is refused."""
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise EncryptionKeyError("encryption_key: expected a string")
    if is_fingerprint(key):
        raise EncryptionKeyError(
            "encryption_key holds a fingerprint (copied from a stored spec), not a key; "
            f"set the key itself, or {ENV_KEY}"
        )
    return key


@functools.lru_cache(maxsize=8)
def _fingerprint_of(key: str) -> str:
    """One fingerprint per key and process (scrypt is slow on purpose; specs are written often)."""
    return fingerprint(key)


def mask_uri_credentials(uri: str) -> str:
    """A URI as files and logs may show it: ``scheme://user:password@host`` -> ``scheme://***@host``."""
    return _URI_CREDENTIALS.sub("//***@", uri)


def redact(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a spec dict whose secrets are fingerprints and whose URIs carry no credentials
    (what may be written anywhere)."""
    out = dict(spec)
    for name in SECRET_KEYS:
        value = out.get(name)
        if value and not is_fingerprint(value):
            out[name] = _fingerprint_of(str(value))
    for section, key in URI_KEYS:
        node = out.get(section)
        if isinstance(node, Mapping) and isinstance(node.get(key), str):
            out[section] = {**node, key: mask_uri_credentials(node[key])}
    return out


def redact_overrides(overrides: list[str]) -> list[str]:
    """``key=value`` overrides with every secret's value replaced by a placeholder (for records)."""
    return [f"{o.split('=', 1)[0]}={HASH_PLACEHOLDER}" if o.split("=", 1)[0].strip() in SECRET_KEYS else o for o in overrides]


def for_hash(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a spec dict with every set secret replaced by one placeholder, so that equal
    specs hash equal whatever the fingerprints' salts (and no hash depends on a key)."""
    out = dict(spec)
    for name in SECRET_KEYS:
        if out.get(name):
            out[name] = HASH_PLACEHOLDER
    return out


def key_from(spec_value: str | None, source: str = "the spec") -> str | None:
    """The key a job runs with: the spec's own, else ``$FOVEAL_ENCRYPTION_KEY``.

    A spec holding a stored fingerprint (a copied ``experiment.yaml``, or a job record run in a
    fresh process) takes the key from the environment, which must match it.

    Raises:
        EncryptionKeyError: a fingerprint without a key in the environment, or not matching it.
    """
    if spec_value and not is_fingerprint(spec_value):
        return check_key(spec_value)
    env = check_key(os.environ.get(ENV_KEY))
    if spec_value and is_fingerprint(spec_value):
        if env is None:
            raise EncryptionKeyError(
                f"{source} was written with an encryption key (encryption_key holds its fingerprint); "
                f"set {ENV_KEY} (or encryption_key) to that key"
            )
        if not matches(env, spec_value):
            raise EncryptionKeyError(f"{ENV_KEY} is not the encryption key {source} was written with")
    return env


# ------------------------------------------------------------------------------ active key


@contextlib.contextmanager
def key_scope(key: str | None) -> Iterator[None]:
    """Make ``key`` the key model files are written and read with while the block runs."""
    token = _ACTIVE.set(check_key(key))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_key() -> str | None:
    """The key of the running action, else ``$FOVEAL_ENCRYPTION_KEY``, else None."""
    return _ACTIVE.get() or check_key(os.environ.get(ENV_KEY))


# ------------------------------------------------------------------------------ files


def _aesgcm(key: str, salt: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(_scrypt(key, salt))


def is_encrypted(data: bytes | str | os.PathLike[str]) -> bool:
    """Whether ``data`` (bytes, or a file's first bytes) is a Foveal-encrypted file."""
    if isinstance(data, bytes):
        return data.startswith(MAGIC)
    try:
        with open(data, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def encrypt_bytes(plain: bytes, key: str) -> bytes:
    """``plain`` encrypted with ``key`` (fresh salt and nonce)."""
    salt, nonce = _random.token_bytes(_SALT), _random.token_bytes(_NONCE)
    return MAGIC + salt + nonce + _aesgcm(key, salt).encrypt(nonce, plain, MAGIC)


def decrypt_bytes(blob: bytes, key: str | None, source: str | os.PathLike[str] = "file") -> bytes:
    """The plain bytes of an encrypted ``blob``.

    Raises:
        EncryptionKeyError: no key, a wrong key, or a damaged file (authentication fails).
    """
    if key is None:
        raise EncryptionKeyError(
            f"{source} is encrypted; set encryption_key in the spec or {ENV_KEY} to the key it was written with"
        )
    head = len(MAGIC)
    salt, nonce = blob[head : head + _SALT], blob[head + _SALT : head + _SALT + _NONCE]
    body = blob[head + _SALT + _NONCE :]
    if len(body) < _TAG:
        raise EncryptionKeyError(f"{source} is an encrypted file cut short (truncated)")
    from cryptography.exceptions import InvalidTag

    try:
        return bytes(_aesgcm(key, salt).decrypt(nonce, body, MAGIC))
    except InvalidTag:
        raise EncryptionKeyError(
            f"{source} does not open with this encryption key (a different key, or the file is damaged)"
        ) from None


def read_model_bytes(path: str | os.PathLike[str], key: str | None = None) -> bytes:
    """A model file's plain bytes, decrypted with ``key`` (default: :func:`active_key`) when encrypted."""
    blob = Path(path).read_bytes()
    if not blob.startswith(MAGIC):
        return blob
    return decrypt_bytes(blob, key if key is not None else active_key(), path)


def seal(plain: bytes, key: str | None = None) -> bytes:
    """What to write for a model file: ``plain`` encrypted when a key is active, else as is."""
    key = key if key is not None else active_key()
    return encrypt_bytes(plain, key) if key else plain


__all__ = [
    "ENV_KEY",
    "MAGIC",
    "SECRET_KEYS",
    "active_key",
    "check_key",
    "decrypt_bytes",
    "encrypt_bytes",
    "fingerprint",
    "for_hash",
    "is_encrypted",
    "is_fingerprint",
    "key_from",
    "key_scope",
    "matches",
    "read_model_bytes",
    "redact",
    "mask_uri_credentials",
    "redact_overrides",
    "seal",
]
