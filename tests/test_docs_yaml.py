"""The documentation is the schema: every YAML snippet of README.md and search_spaces/README.md validates.

A fenced ```yaml block (or an unlabelled one whose keys are study fields) with `name` and `methods` is a whole
study; any other block, and any inline `key: value` span, is a fragment that must validate at one place of a
small study: its top level, a method block, a dataset entry, or a section (train, lora, resources, asha).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from cytotune.config import TrainSettings
from cytotune.errors import CytotuneError
from cytotune.study.grid import expand_cells
from cytotune.study.spec import (
    AshaSettings,
    LoraGrid,
    MethodBlock,
    StudySpec,
    TrialResources,
    load_study,
)

REPO = Path(__file__).resolve().parent.parent
DOCS = [path for path in (REPO / "README.md", REPO / "search_spaces" / "README.md") if path.is_file()]
INLINE = re.compile(r"(?<!`)`([a-z_]+: [^`\n]+)`(?!`)")
BASE = {
    "name": "doc",
    "backbones": ["tiny_clip"],
    "datasets": [{"name": "synthetic", "root": "/data/synthetic"}],
    "methods": [{"method": "lora", "lr": 0.01}],
}
SECTIONS = ("train", "lora", "resources", "asha")


def fences(text: str) -> list[tuple[int, str, str]]:
    """(first line number, language, body) of each fenced block of a markdown text."""
    blocks, lines, start, language = [], text.splitlines(keepends=True), None, ""
    for number, line in enumerate(lines, 1):
        if not line.lstrip().startswith("```"):
            continue
        if start is None:
            start, language = number, line.strip().removeprefix("```").strip()
        else:
            indent = len(lines[start - 1]) - len(lines[start - 1].lstrip())
            body = "".join(row[indent:] for row in lines[start : number - 1])
            blocks.append((start + 1, language, body))
            start = None
    return blocks


def snippets(path: Path) -> list[tuple[str, str]]:
    """(where, text) of each YAML snippet of a markdown file: fenced blocks, inline `key: value` spans."""
    text = path.read_text()
    blocks = fences(text)
    found = [
        (f"{path.name}:{line}", body)
        for line, language, body in blocks
        if language in ("yaml", "yml") or (not language and _study_keys(body))
    ]
    prose = "".join(
        line for number, line in enumerate(text.splitlines(keepends=True), 1) if not _inside(number, blocks)
    )
    found += [(f"{path.name} `{m.group(1)}`", m.group(1)) for m in INLINE.finditer(prose)]
    return found


def _inside(number: int, blocks: list[tuple[int, str, str]]) -> bool:
    return any(line - 1 <= number <= line + body.count("\n") for line, _, body in blocks)


def _study_keys(text: str) -> bool:
    """Whether an unlabelled block is YAML whose keys are all fields of a study, method block or section."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    models = (StudySpec, MethodBlock, TrainSettings, LoraGrid, TrialResources, AshaSettings)
    known = {name for model in models for name in model.model_fields}
    return isinstance(data, dict) and bool(data) and set(data) <= known


def placements(fragment: dict) -> list[dict]:
    """The small study with the fragment at each place it could go."""
    out = []
    top = {**copy.deepcopy(BASE), **fragment}
    out.append(top)
    block = {**BASE["methods"][0], **fragment}
    if "lr" in fragment.get("search", {}):
        block.pop("lr")
    out.append({**copy.deepcopy(BASE), "methods": [block]})
    out.append({**copy.deepcopy(BASE), "methods": [{"method": "knn", **fragment}]})  # knn's own field, k
    searched = {"lr": {"optuna": "loguniform", "low": 1.0e-5, "high": 1.0e-2}}
    optuna = {**BASE["methods"][0], "search": searched, "samples": 8, **fragment}  # optuna's own settings
    optuna.pop("lr", None)
    out.append({**copy.deepcopy(BASE), "methods": [optuna]})
    entry = {**BASE["datasets"][0], **fragment}
    out.append({**copy.deepcopy(BASE), "datasets": [entry]})
    for section in SECTIONS:
        inner = (
            {section: fragment}
            if section != "asha"
            else {section: {"grace_period": 1, "max_steps": 2, **fragment}}
        )
        out.append({**copy.deepcopy(BASE), "methods": [{**BASE["methods"][0], **inner}]})
        out.append({**copy.deepcopy(BASE), **inner})
    return out


def check_snippet(text: str, tmp_path: Path) -> None:
    """Raise (the first placement's error) when the snippet is not valid anywhere."""
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"expected a YAML mapping, got {data!r}"
    if "name" in data and "methods" in data:
        path = tmp_path / "snippet.yaml"
        path.write_text(text)
        expand_cells(load_study(path))
        return
    errors = []
    for study in placements(data):
        try:
            expand_cells(StudySpec.model_validate(study))
            return
        except (ValidationError, CytotuneError) as err:
            errors.append(err)
    raise errors[0]


ALL = [snippet for doc in DOCS for snippet in snippets(doc)]


@pytest.mark.parametrize(("where", "text"), ALL, ids=[where for where, _ in ALL])
def test_every_yaml_snippet_of_the_docs_validates(where, text, tmp_path):
    check_snippet(text, tmp_path)


def test_the_readme_s_snippets_are_all_found():
    readme = [where for where, _ in snippets(REPO / "README.md")]
    assert sum(":" in w and "`" not in w for w in readme) >= 2
    assert any("`weights: {uni:" in w for w in readme)
    assert any("`search: {lr: [" in w for w in readme)


@pytest.mark.parametrize(
    "text",
    [
        "search: {lr: {optuna: loguniform, low: 1.0e-5, high: 1.0e-2, samples: 8}}",
        "asha: {grace_period, reduction_factor, max_steps}",
        "datasets: [{name: a, layout: folder, root: x}, {name: a, layout: folder, root: y}]",
        "name: s\nbackbones: [tiny_clip]\ndatasets: [{root: /d/synthetic}]\nmethods: [{method: lora}]\n",
    ],
)
def test_a_wrong_snippet_is_refused(text, tmp_path):
    with pytest.raises((ValidationError, CytotuneError)):
        check_snippet(text, tmp_path)


def test_no_merge_conflict_markers_in_the_docs():
    docs = [REPO / "README.md", *REPO.glob("search_spaces/*.md"), *REPO.glob("infra/**/*.md")]
    marked = [
        f"{path.relative_to(REPO)}:{number}"
        for path in docs
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"^(<{7} |>{7} |={7}$)", line)
    ]
    assert marked == []
