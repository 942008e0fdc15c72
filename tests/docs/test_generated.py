"""The reference tables of the docs are generated from their declarations (`scripts/gen_docs.py`)."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sidecar import worker
from sidecar.errors import SidecarError
from sidecar.metrics import FAMILIES
from sidecar.openapi import ERROR_ANSWERS, openapi_document
from sidecar.probe import FAMILIES as PROBE_FAMILIES

REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gen_docs", REPO_ROOT / "scripts" / "gen_docs.py")
assert _spec is not None and _spec.loader is not None
gen_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_docs)


def test_every_family_is_a_row_with_its_type() -> None:
    table = gen_docs.metrics_table() + "\n" + gen_docs.probe_metrics_table()
    for family in (*FAMILIES, *PROBE_FAMILIES):
        sample = family.name + "_total" if family.type == "counter" else family.name
        assert re.search(rf"^\| `{sample}` \| {family.type} \|", table, re.M), sample


@pytest.mark.parametrize("family", [*FAMILIES, *PROBE_FAMILIES], ids=lambda f: f.name)
def test_fixed_label_values_belong_to_labels_of_the_family(family) -> None:
    assert {label for label, _ in family.values} <= set(family.labels)


def test_errors_family_lists_every_error_outcome() -> None:
    from sidecar.sandbox.outcomes import ERROR_OUTCOMES

    row = next(line for line in gen_docs.metrics_table().splitlines() if "sidecar_plugin_errors_total" in line)
    assert "`error_type` ∈ {" + ", ".join(ERROR_OUTCOMES) + "}" in row


def test_every_check_key_is_a_row_with_its_meaning() -> None:
    from sidecar.schema import CheckTable

    table = gen_docs.checks_table()
    for key in CheckTable.__struct_fields__:
        row = next((line for line in table.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, key
        assert not row.endswith("|  |"), f"{key} has no meaning: describe it where CheckTable declares it"
    assert "| `plugin` | string, required |" in table
    assert "| `timeout_seconds` | number > 0, ≤ 1 year |" in table


def test_every_route_is_a_row() -> None:
    table = gen_docs.routes_table()
    for path, item in openapi_document()["paths"].items():
        for method in item:
            assert f"`{method.upper()} {path}`" in table, (method, path)
    assert re.search(r"^\| `POST /plugins/\{name\}/run` \(token\) \| .* \| 400, 401, 404, 413, 503 \|$", table, re.M)


def test_every_error_code_the_server_answers_is_declared_with_its_status() -> None:
    declared = {code: a.status for a in ERROR_ANSWERS for code in a.codes}
    answered = {cls.code: cls.status for cls in SidecarError._by_code.values()}
    answered |= {code: status for _, status, code in worker._CLIENT_ERRORS}
    answered |= {"not_found": 404, "method_not_allowed": 405}  # werkzeug's, named by the app's error handler
    answered |= {"internal": 500}
    assert answered == declared
    table = gen_docs.errors_table()
    for code in declared:
        assert f"`{code}`" in table


def test_every_alert_is_a_row_with_severity_and_runbook() -> None:
    table = gen_docs.alerts_table()
    rules = [r for g in yaml.safe_load(gen_docs.ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert re.search(rf"^\| `{name}` \| {rule['labels']['severity']} \| .*\(runbooks\.md#{name.lower()}\) \|$",
                         table, re.M), name


def test_cells_stay_in_their_column() -> None:
    assert gen_docs._cell("a | b\n c") == r"a \| b c"


def test_regenerate_fills_a_region_and_keeps_the_rest() -> None:
    text = "before\n<!-- generated: x by the script -->\nold\nrows\n<!-- end: x -->\nafter\n"
    assert gen_docs.regenerate(text, {"x": "| new |"}) == (
        "before\n<!-- generated: x by the script -->\n| new |\n<!-- end: x -->\nafter\n")
    with pytest.raises(SystemExit, match="unknown generated table 'x'"):
        gen_docs.regenerate(text, {})


def test_committed_pages_hold_the_generated_tables() -> None:
    found = gen_docs.problems()
    assert found == [], f"{found}: run `{gen_docs.COMMAND}` and commit the pages"


def test_a_stale_page_is_named_and_rewritten(tmp_path: Path) -> None:
    for page in gen_docs.pages():
        if page.is_file():
            target = tmp_path / page.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(page, target)
    config = tmp_path / "docs" / "configuration.md"
    config.write_text(config.read_text().replace("`SIDECAR_BIND`", "`SIDECAR_LISTEN`", 1))
    assert gen_docs.problems(tmp_path) == ["docs/configuration.md: a generated table differs from the code"]
    assert gen_docs.write(tmp_path) == [config]
    assert gen_docs.problems(tmp_path) == []
