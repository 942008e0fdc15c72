"""The deployment files validated offline against the schemas their consumers enforce.

- Kubernetes objects (Deployment, Service, ...) with `kubernetes-validate`'s bundled schemas of the newest
  Kubernetes it knows, in strict mode (an unknown field fails, as `kubectl apply --validate=strict` would).
- The PodMonitor and PrometheusRule against the openAPIV3Schema of prometheus-operator's CRDs, kept in
  deploy/kubernetes/schemas/ (its README names the release). The CRD schemas do not forbid unknown fields
  (the API server prunes them silently), so the test forbids them wherever the schema does not preserve
  unknown fields: a misspelt field would otherwise vanish on apply.
- docker-compose.yml against the compose-spec schema vendored in `check-jsonschema`.

Each validator is also shown a broken copy, so a validator that accepts anything fails the suite. Nothing
here uses the network.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "kubernetes"
SCHEMAS = K8S / "schemas"
#: Kinds defined by prometheus-operator's CRDs, validated against the schemas kept in the repository.
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
COMPOSE = REPO_ROOT / "docker-compose.yml"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) of every object in every manifest of deploy/kubernetes/."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


def _ids(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in items]


BUILTIN = [(n, d) for n, d in manifests() if d["kind"] not in CRD_KINDS]
CUSTOM = [(n, d) for n, d in manifests() if d["kind"] in CRD_KINDS]


def test_every_manifest_is_checked() -> None:
    kinds = {d["kind"] for _, d in manifests()}
    assert {"Deployment", "PodMonitor", "PrometheusRule"} <= kinds
    assert all(d["apiVersion"] == "monitoring.coreos.com/v1" for _, d in CUSTOM)


# --- Kubernetes built-in kinds --------------------------------------------------------------------------


def k8s_errors(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
    return None


@pytest.mark.parametrize(("name", "doc"), BUILTIN, ids=_ids(BUILTIN))
def test_kubernetes_object_is_valid(name: str, doc: dict[str, Any]) -> None:
    assert k8s_errors(doc) is None, f"{name} against Kubernetes {kubernetes_validate.latest_version()}"


def test_kubernetes_validation_rejects_a_broken_deployment() -> None:
    doc = next(d for _, d in BUILTIN if d["kind"] == "Deployment")
    typo = copy.deepcopy(doc)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert k8s_errors(typo) is not None
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["replicas"] = "two"
    assert k8s_errors(wrong_type) is not None


# --- prometheus-operator kinds ---------------------------------------------------------------------------


def _closed(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever it lists properties and does not preserve others."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(kind: str, version: str) -> dict[str, Any]:
    schema = json.loads((SCHEMAS / f"{kind.lower()}-{version}.json").read_text())
    return dict(_closed(schema))


def crd_errors(doc: dict[str, Any]) -> list[str]:
    schema = crd_schema(doc["kind"], doc["apiVersion"].rsplit("/", 1)[1])
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize(("name", "doc"), CUSTOM, ids=_ids(CUSTOM))
def test_custom_resource_matches_the_crd_schema(name: str, doc: dict[str, Any]) -> None:
    errors = crd_errors(doc)
    assert not errors, f"{name}:\n" + "\n".join(errors)
    # The object's metadata is an ObjectMeta, which the CRD schema leaves open: check its form too.
    meta = doc["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}, meta
    assert all(isinstance(v, str) for v in meta.get("labels", {}).values())


def test_crd_schema_rejects_broken_resources() -> None:
    monitor = copy.deepcopy(next(d for _, d in CUSTOM if d["kind"] == "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["scrapeIntervall"] = "15s"
    assert crd_errors(monitor)
    monitor = copy.deepcopy(next(d for _, d in CUSTOM if d["kind"] == "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rewrite"
    assert crd_errors(monitor)
    rule = copy.deepcopy(next(d for _, d in CUSTOM if d["kind"] == "PrometheusRule"))
    del rule["spec"]["groups"][0]["name"]
    assert crd_errors(rule)
    rule = copy.deepcopy(next(d for _, d in CUSTOM if d["kind"] == "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["expression"] = "up"
    assert crd_errors(rule)


def test_crd_schemas_name_their_release() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for kind in CRD_KINDS:
        assert f"{kind.lower()}-v1.json" in readme
    assert "prometheus-operator" in readme and "v0." in readme


# --- docker-compose.yml -----------------------------------------------------------------------------------


def compose_errors(path: Path) -> subprocess.CompletedProcess[str]:
    checker = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_compose_file_matches_the_compose_spec() -> None:
    proc = compose_errors(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_spec_rejects_a_broken_file(tmp_path: Path) -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    doc["services"]["sidecar-1"]["healthcheck"]["intervall"] = "15s"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    proc = compose_errors(broken)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "intervall" in proc.stdout + proc.stderr
