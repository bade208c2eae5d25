import subprocess
import sys

import pytest

from foveal.jobs import WORKSPACE_ENV, Workspace

pytestmark = pytest.mark.unit


def test_resolve_prefers_argument_then_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path / "from-env"))
    assert Workspace.resolve(tmp_path / "explicit").root == tmp_path / "explicit"
    assert Workspace.resolve().root == tmp_path / "from-env"
    monkeypatch.delenv(WORKSPACE_ENV)
    assert Workspace.resolve().root == tmp_path / "foveal-workspace"


def test_layout_and_ensure(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert ws.db_path == ws.root / "registry.sqlite"
    assert ws.results_dir("abc") == ws.root / "results" / "abc"
    assert not ws.root.exists()
    ws.ensure()
    for folder in (ws.root, ws.results_root, ws.cache_dir, ws.data_dir):
        assert folder.is_dir()
    registry = ws.open_registry()
    job = registry.create("mae", "train", {})
    assert job.results_dir == str(ws.results_dir(job.id))


def test_package_does_not_import_torch():
    code = "import sys, foveal.jobs; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
