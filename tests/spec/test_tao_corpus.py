"""The TAO compatibility corpus: 48 real TAO spec files (``../shared/tao_specs``, copied unchanged
from NVIDIA's repositories) checked with ``foveal spec check`` for the action SOURCES.md names.

Every file ends in one of four outcomes, and which one is pinned per file here:

* ``loads``: as written;
* ``filled``: once the blanks TAO's launcher fills are given (``results_dir``, ``???`` values,
  the dataset and checkpoint paths a template leaves empty, ``+root_dir``): the only errors of
  the file as written are "not set" lines, and with those keys given it loads;
* ``tao_rejects``: TAO's own loader refuses it too (duplicate YAML keys; a key its schema does
  not have): one line per problem, naming it;
* ``not_in_foveal``: a TAO action or path Foveal does not implement: one line for the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foveal import api
from foveal.errors import UsageError

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "tao_specs"
NETWORKS = {"classification_pyt": "classification", "mae": "mae", "nvdinov2": "nvdinov2"}
NOT_SET = re.compile(r"(required for \w+ but|mandatory \(\?\?\?\) and) not set$|which is not set$")

# Files whose outcome is not "loads" or "filled", with what their one-line errors must name.
TAO_REJECTS = {
    "mae__tpb__export.yaml": ["train: duplicate key at lines 14 and 45", "dataset: duplicate key at lines 18 and 49"],
    "mae__deploy__gen_trt_engine.yaml": [
        "train: duplicate key at lines 14 and 65",
        "dataset: duplicate key at lines 18 and 69",
    ],
    "classification_pyt__tpb__train_imagenet_nvdino_large.yaml": ["train.optim.policy: duplicate key at lines 23 and 24"],
    "nvdinov2__deploy__gen_trt_engine.yaml": ["model.backbone.type: unknown key"],
}
NOT_IN_FOVEAL = {
    "classification_pyt__skillbank__spec_template_distill.yaml": "TAO's distill action",
    "classification_pyt__tpb__distill.yaml": "TAO's distill action",
    "classification_pyt__skillbank__spec_template_quantize.yaml": "TAO's quantize action",
    "classification_pyt__tpb__quantize.yaml": "TAO's quantize action",
}
# Hydra-style additions a file's own ${...} references need (TAO's launcher passes them the same way)
EXTRA = {"classification_pyt__tpb__experiment_spec.yaml": ["+root_dir=/data/imagenet"]}


def _sources() -> list[tuple[str, str, str]]:
    rows = []
    for line in (CORPUS / "SOURCES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].endswith(".yaml"):
            for action in cells[4].split("+"):
                rows.append((cells[0], NETWORKS[cells[0].split("__")[0]], action))
    return rows


SOURCES = _sources()


def test_the_corpus_is_all_there():
    files = {name for name, _, _ in SOURCES}
    assert len(files) == 48 and files == {p.name for p in CORPUS.glob("*.yaml")}
    assert set(TAO_REJECTS) | set(NOT_IN_FOVEAL) | set(EXTRA) <= files


def _check(name: str, network: str, action: str, overrides: list[str]):
    return api.check(network, action, spec=CORPUS / name, overrides=[*EXTRA.get(name, []), *overrides])


def _fill(name: str, network: str, action: str) -> tuple[list[str], object]:
    """Give every "not set" key a value, as TAO's launcher does; returns the overrides and result."""
    filled: list[str] = []
    for _ in range(3):  # filling one key may reveal another (a reference to it)
        result = _check(name, network, action, filled)
        blanks = [e for e in result.errors if NOT_SET.search(e.message)]
        if not blanks:
            return filled, result
        for issue in blanks:
            key = issue.key
            if "refers to" in issue.message:  # ${results_dir}/... -> set the referenced key
                key = re.search(r"refers to (\S+), which", issue.message).group(1)  # type: ignore[union-attr]
            filled.append(f"{key}=/filled/{key.replace('.', '/')}")
    return filled, _check(name, network, action, filled)


@pytest.mark.parametrize(("name", "network", "action"), SOURCES, ids=[f"{n}:{a}" for n, _, a in SOURCES])
def test_tao_spec_loads_for_its_action(name, network, action):
    if name in NOT_IN_FOVEAL:
        try:
            filled, result = _fill(name, network, action)
        except UsageError as exc:  # a TAO-only action: refused before the spec is read
            lines = str(exc).splitlines()
        else:
            lines = [str(e) for e in result.errors]
        assert len(lines) == 1 and NOT_IN_FOVEAL[name] in lines[0], lines
        return
    filled, result = _fill(name, network, action)
    errors = [str(e) for e in result.errors]
    if name in TAO_REJECTS:
        assert len(errors) == len(TAO_REJECTS[name]), errors
        for expected, line in zip(TAO_REJECTS[name], errors, strict=True):
            assert line.startswith(expected), (expected, line)
        return
    assert result.ok, errors
    assert result.spec is not None
    for override in filled:  # what was filled is what the resolved spec holds
        key, _, value = override.partition("=")
        node = result.spec
        for part in key.split("."):
            node = node[part]
        assert node == value


def _outcomes() -> dict[str, str]:
    out = {}
    for name, network, action in SOURCES:
        if name in NOT_IN_FOVEAL:
            out[name] = "not_in_foveal"
        elif name in TAO_REJECTS:
            out[name] = "tao_rejects"
        else:
            result = _check(name, network, action, [])
            out[name] = "loads" if result.ok and out.get(name, "loads") == "loads" else "filled"
    return out


def test_corpus_counts(capsys):
    """The per-source, per-network figures of the closing note (printed with ``-s``)."""
    outcomes = _outcomes()
    table: dict[tuple[str, str], list[int]] = {}
    for name, outcome in outcomes.items():
        network, source = name.split("__")[:2]
        for key in ((source, network), (source, "all"), ("all", network), ("all", "all")):
            row = table.setdefault(key, [0, 0, 0])
            row[0] += outcome in ("loads", "filled")
            row[1] += outcome == "loads"
            row[2] += 1
    with capsys.disabled():
        for (source, network), (loaded, as_written, total) in sorted(table.items()):
            print(f"corpus {source:9} {network:18} {loaded}/{total} load ({as_written} as written)")
    assert table[("all", "all")][2] == 48
    assert table[("all", "all")][0] == 48 - len(TAO_REJECTS) - len(NOT_IN_FOVEAL)


def test_another_networks_spec_is_one_line_naming_it():
    result = api.check("classification", "train", spec=CORPUS / "mae__tpb__pretrain.yaml")
    (issue,) = result.errors
    assert "this looks like a mae spec, not a classification one" in issue.message
    assert issue.suggestion == "run foveal mae train -e ..."
    # a spec with a stray key or two keeps its per-key lines
    result = api.check("classification", "train", overrides=["dataset.bogus=1", "dataset.train_dataset.images_dir=/d"])
    assert [e.key for e in result.errors] == ["dataset.bogus"]
