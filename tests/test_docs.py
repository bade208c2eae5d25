"""The documentation cannot drift from the code: every code block of every page runs (bash and
Python, in order, in a fresh folder per page), except the blocks marked
``<!-- illustration: why -->`` just above them; the site builds in strict mode; every schema
field has a description for the generated spec reference."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foveal.networks.registry import list_networks
from foveal.spec.fields import field_meta, is_section_type, resolved_fields

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
_BLOCK = re.compile(r"(?:<!-- illustration: (?P<why>[^>]*?)\s*-->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S)


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """``(language, code, illustration reason or None)`` of every bash and Python block."""
    return [(m["lang"], m["code"], m["why"]) for m in _BLOCK.finditer(page.read_text(encoding="utf-8"))]


def test_every_page_is_parsed_and_every_illustration_says_why():
    assert {p.relative_to(DOCS).as_posix() for p in PAGES} >= {"index.md", "getting-started.md", "guides/automl.md"}
    fenced = 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        fenced += len(re.findall(r"^```(?:bash|python)$", text, re.M))
        for _, _, why in blocks(page):
            assert why is None or len(why.strip()) > 10, f"{page}: an illustration needs its reason"
    assert fenced == sum(len(blocks(p)) for p in PAGES)  # no block escapes the parser


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("page", [p for p in PAGES if any(why is None for _, _, why in blocks(p))],
                         ids=lambda p: p.relative_to(DOCS).as_posix())  # fmt: skip
def test_the_code_blocks_of_a_page_run(page, tmp_path):
    env = {
        **os.environ,
        "FOVEAL_WORKSPACE": str(tmp_path / "foveal-workspace"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for index, (lang, code, why) in enumerate(blocks(page)):
        if why is not None:
            continue
        argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{page.name} block {index + 1} ({lang}) failed:\n{code}\n{done.stderr[-3000:]}"


def test_every_schema_field_has_a_description():
    missing = []

    def walk(cls: type, prefix: str) -> None:
        for f, tp in resolved_fields(cls):
            if not (field_meta(f).get("description") or "").strip():
                missing.append(prefix + f.name)
            if is_section_type(tp):
                walk(tp, f"{prefix}{f.name}.")

    for network in list_networks():
        walk(network.config_cls, f"{network.name}: ")
    assert missing == []


@pytest.mark.integration
def test_the_site_builds_in_strict_mode(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    spec_page = (tmp_path / "site" / "reference" / "spec" / "nvdinov2" / "index.html").read_text()
    assert "model.backbone.teacher_type" in spec_page and "train.schedulers.learning_rate.val_base" in spec_page
