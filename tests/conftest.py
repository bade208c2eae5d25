"""Fixtures shared by every test folder: registries restored after each test, a real S3-compatible
server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# --------------------------------------------------------------------------- registries


@pytest.fixture(autouse=True)
def _restore_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ported networks and backbones registered by a test (a port, a task demo) must not leak into
    the next one; ``-w`` sets $FOVEAL_WORKSPACE for the process, which monkeypatch puts back."""
    from foveal.networks import registry as networks
    from foveal.nn import registry as backbones

    networks.list_networks()
    saved_networks, saved_backbones = dict(networks._NETWORKS), dict(backbones._BACKBONES)
    monkeypatch.delenv("FOVEAL_WORKSPACE", raising=False)
    yield
    networks._NETWORKS.clear()
    networks._NETWORKS.update(saved_networks)
    backbones._BACKBONES.clear()
    backbones._BACKBONES.update(saved_backbones)


# --------------------------------------------------------------------------- a real browser

# Appended to a copy of the page: once everything has loaded, the title says how many images
# decoded (a broken data: URI decodes to 0 x 0) and whether a script error happened.
_PAGE_PROBE = """<script>
var errors = 0; window.addEventListener("error", function () { errors += 1; });
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.naturalHeight > 0; });
  document.title = "PROBE images=" + imgs.length + " decoded=" + ok.length + " errors=" + errors;
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless Chromium (.ci/run installs it; FOVEAL_REQUIRE_BROWSER=1 makes its absence
    a failure, not a skip)."""
    import os
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("FOVEAL_REQUIRE_BROWSER") == "1":
        pytest.fail("no chromium on the PATH (apt-get install chromium)")
    pytest.skip("no chromium on the PATH (apt-get install chromium)")


@pytest.fixture
def render_page(chromium: str, tmp_path: Path):
    """``render_page(html_file)`` -> ``{"images", "decoded", "errors", "drawn"}``: the page loaded
    in headless Chromium (how many images it has and how many decoded, script errors) and the
    fraction of a 1200 x 2400 screenshot that is not blank (near-white)."""
    import re
    import subprocess

    from PIL import Image

    def render(page: Path) -> dict:
        probe = tmp_path / f"probe-{page.parent.name}.html"
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PAGE_PROBE + "</body>"))
        args = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}"]  # fmt: skip
        dom = subprocess.run(
            [*args, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        found = re.search(r"PROBE images=(\d+) decoded=(\d+) errors=(\d+)", dom.stdout)
        assert found, f"the page did not finish loading in Chromium: {dom.stderr[-500:]}"
        shot = tmp_path / f"shot-{page.parent.name}.png"
        subprocess.run(
            [*args, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        images, decoded, errors = (int(g) for g in found.groups())
        histogram = Image.open(shot).convert("L").histogram()
        drawn = 1.0 - sum(histogram[245:]) / sum(histogram)
        return {"images": images, "decoded": decoded, "errors": errors, "drawn": drawn}

    return render


# --------------------------------------------------------------------------- PostgreSQL


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on loopback (Debian's package; .ci/run installs it), its own data
    folder, stopped after the session. Yields ``postgresql://foveal:<password>@127.0.0.1:<port>/foveal``.
    As root the server runs as the ``postgres`` user (it refuses to run as root)."""
    import glob
    import os
    import secrets as pysecrets
    import shutil
    import subprocess

    pytest.importorskip("psycopg")  # SQLAlchemy's postgresql:// driver (the `postgres` extra)
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        if os.environ.get("FOVEAL_REQUIRE_SERVICES") == "1":
            pytest.fail("no PostgreSQL server (apt-get install postgresql)")
        pytest.skip("no PostgreSQL server (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    import tempfile

    # not under pytest's tmp folder: as root, that is private to root and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="foveal-postgres-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    password = pysecrets.token_hex(8)
    (root / "pw").write_text(password)
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        shutil.chown(root / "pw", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "foveal", "--auth=scram-sha-256", f"--pwfile={root / 'pw'}")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1", "start")  # fmt: skip
    try:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="foveal", password=password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE foveal")
        yield f"postgresql://foveal:{password}@127.0.0.1:{port}/foveal"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- SLURM

_SLURM_CONF = """ClusterName=foveal
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster on loopback (Debian's slurmctld, slurmd and munge; .ci/run installs
    them): its own munge key and socket, config, state and logs in a temporary folder, free ports;
    stopped after the session. Yields the environment its clients need (``SLURM_CONF``).
    slurmd runs as root, so the fixture needs root (CI has it)."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile
    import time

    need = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "squeue", "scancel", "scontrol")
    missing = [n for n in need if shutil.which(n) is None and not Path(f"/usr/sbin/{n}").exists()]
    why = (f"no SLURM/munge ({', '.join(missing)}): apt-get install slurmctld slurmd munge" if missing
           else "slurmd needs root" if os.geteuid() != 0 else "")  # fmt: skip
    if why:
        if os.environ.get("FOVEAL_REQUIRE_SERVICES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    root = Path(tempfile.mkdtemp(prefix="foveal-slurm-"))
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_SLURM_CONF.format(host=host, root=root, ctld_port=_free_port(), d_port=_free_port(),
                                       cpus=os.cpu_count() or 1))  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(conf)}
    run = lambda *cmd: subprocess.run(list(cmd), check=True, capture_output=True, text=True, env=env)  # noqa: E731
    run(sbin("mungekey"), "-c", "-k", str(root / "munge.key"))
    run(sbin("munged"), "--force", f"--key-file={root / 'munge.key'}", f"--socket={root / 'munge.sock'}",
        f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
        f"--seed-file={root / 'munge.seed'}")  # fmt: skip
    try:
        run(sbin("slurmctld"))
        run(sbin("slurmd"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout
            if state.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the SLURM node never became idle: {(root / 'log' / 'slurmctld.log').read_text()[-1500:]}")
        yield {"SLURM_CONF": str(conf)}
    finally:
        subprocess.run(["scontrol", "shutdown"], capture_output=True, env=env)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            try:
                os.kill(int((root / pid_file).read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- S3 (moto server)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server on loopback (moto's server mode), one per session."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Environment pointing foveal and boto3 at the moto server; returns a boto3 S3 client."""
    boto3 = pytest.importorskip("boto3")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("FOVEAL_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> dict:
    """``import tensorrt`` gives an ONNX Runtime-backed stand-in for this test (tests/fake_tensorrt.py);
    the fixture's value records what the builder and runtime were asked to do."""
    import fake_tensorrt as fake

    return fake.install(monkeypatch)
