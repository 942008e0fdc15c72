"""Static checks of docker-compose.yml, the Dockerfile, Prometheus/Grafana provisioning and the Kubernetes
manifests: the pieces must agree with each other and with the repository (docker is not run here)."""

import fnmatch
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack.dockerfile import dockerfile, dockerfile_copy_sources, dockerfile_env

REPO_ROOT = Path(__file__).resolve().parents[2]
PORT = 9464
SIDECARS = ("sidecar-1", "sidecar-2")
K8S = REPO_ROOT / "deploy" / "kubernetes"


def load_yaml(relative: str) -> Any:
    return yaml.safe_load((REPO_ROOT / relative).read_text())


COMPOSE: dict[str, Any] = load_yaml("docker-compose.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]
PROMETHEUS: dict[str, Any] = load_yaml("prometheus/prometheus.yml")


def container_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts.append((source, target))
    return mounts


def container_ports(service: dict[str, Any]) -> list[int]:
    return [int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])]


# --- docker-compose.yml ---------------------------------------------------------------------------------


def test_compose_services() -> None:
    assert set(SERVICES) >= {*SIDECARS, "prometheus", "alertmanager", "grafana"}


def test_compose_bind_mounts_exist_in_the_repo() -> None:
    for name, service in SERVICES.items():
        for source, target in container_mounts(service):
            if source.startswith((".", "/")):
                assert (REPO_ROOT / source).resolve().exists(), f"{name}: {source} -> {target} is missing"
                assert (REPO_ROOT / source).resolve().is_relative_to(REPO_ROOT), (
                    f"{name}: {source} leaves the repo"
                )
            else:
                assert source in (COMPOSE.get("volumes") or {}), f"{name}: named volume {source} not declared"


@pytest.mark.parametrize("name", SIDECARS)
def test_compose_sidecar(name: str) -> None:
    service = SERVICES[name]
    build = service["build"]
    assert (REPO_ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
    assert service["environment"]["SIDECAR_BIND"] == f"0.0.0.0:{PORT}"
    assert container_ports(service) == [PORT]
    assert any(host.startswith("127.0.0.1:") for host in service["ports"]), "publish on loopback only"
    data_dir = service["environment"].get("SIDECAR_DATA_DIR", dockerfile_env()["SIDECAR_DATA_DIR"])
    mounts = dict((t, s) for s, t in container_mounts(service))
    assert data_dir in mounts and not mounts[data_dir].startswith((".", "/")), "named volume for the data dir"
    healthcheck = " ".join(service["healthcheck"]["test"])
    assert f"http://127.0.0.1:{PORT}/healthz" in healthcheck


def test_compose_sidecars_have_distinct_volumes_and_host_ports() -> None:
    volumes = [dict((t, s) for s, t in container_mounts(SERVICES[n]))["/var/lib/sidecar"] for n in SIDECARS]
    assert len(set(volumes)) == len(SIDECARS)
    host_ports = [p for n in SIDECARS for p in SERVICES[n]["ports"]]
    assert len(set(host_ports)) == len(host_ports)


def test_compose_prometheus() -> None:
    service = SERVICES["prometheus"]
    command = service["command"]
    assert "--web.enable-lifecycle" in command
    config = next(c.split("=", 1)[1] for c in command if c.startswith("--config.file="))
    mounts = container_mounts(service)
    # The config file is reachable through a bind mount of the repository's prometheus/ directory.
    assert any(
        config.startswith(target.rstrip("/") + "/")
        and (REPO_ROOT / source / config[len(target.rstrip("/")) + 1 :]).resolve()
        == (REPO_ROOT / "prometheus/prometheus.yml").resolve()
        for source, target in mounts
    ), f"{config} is not prometheus/prometheus.yml"
    storage = next(c.split("=", 1)[1] for c in command if c.startswith("--storage.tsdb.path="))
    assert any(target == storage and not source.startswith(".") for source, target in mounts)


def _secret_paths(service: dict[str, Any]) -> dict[str, str]:
    """The service's compose secrets: container path -> secret name (short syntax lands in /run/secrets/)."""
    paths: dict[str, str] = {}
    for secret in service.get("secrets", ()):
        if isinstance(secret, str):
            paths[f"/run/secrets/{secret}"] = secret
        else:
            target = secret.get("target", secret["source"])
            paths[target if target.startswith("/") else f"/run/secrets/{target}"] = secret["source"]
    return paths


def test_compose_prometheus_probes_with_the_sidecars_token() -> None:
    """/probe needs the token the sidecars are given: the probe job reads the same compose secret."""
    probe_jobs = [j for j in PROMETHEUS["scrape_configs"] if j.get("metrics_path") == "/probe"]
    assert probe_jobs
    sidecar_env = SERVICES[SIDECARS[0]]["environment"]
    token_secret = _secret_paths(SERVICES[SIDECARS[0]])[sidecar_env["SIDECAR_API_TOKEN_FILE"]]
    prometheus_secrets = _secret_paths(SERVICES["prometheus"])
    for job in probe_jobs:
        path = job["authorization"]["credentials_file"]
        assert prometheus_secrets.get(path) == token_secret, (job["job_name"], path, prometheus_secrets)
        assert job["authorization"].get("type", "Bearer") == "Bearer"
    # Prometheus's image runs as nobody: the copied secret is its own to read.
    mounted = next(s for s in SERVICES["prometheus"]["secrets"] if not isinstance(s, str))
    assert str(mounted["uid"]) == "65534"


def test_compose_alertmanager_matches_prometheus_config() -> None:
    targets = [
        t
        for am in PROMETHEUS["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"]
    service = SERVICES["alertmanager"]
    config = next(c.split("=", 1)[1] for c in service["command"] if c.startswith("--config.file="))
    assert ("./alertmanager/alertmanager.yml", config) in container_mounts(service)


def test_compose_grafana() -> None:
    service = SERVICES["grafana"]
    env = service["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert container_ports(service) == [3000]
    mounts = dict((t, s) for s, t in container_mounts(service))
    assert mounts["/etc/grafana/provisioning/datasources"] == "./grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./grafana/provisioning/dashboards"
    # The dashboard provider reads the directory the dashboards are mounted at.
    provider = load_yaml("grafana/provisioning/dashboards/sidecar.yml")["providers"][0]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (REPO_ROOT / "grafana/dashboards" / home.rsplit("/", 1)[1]).is_file()


def test_grafana_datasource_points_at_compose_prometheus() -> None:
    datasources = load_yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    prom = [d for d in datasources if d["type"] == "prometheus"]
    assert len(prom) == 1 and prom[0]["isDefault"] is True
    assert prom[0]["url"] == "http://prometheus:9090"
    assert 9090 in container_ports(SERVICES["prometheus"])
    assert prom[0]["jsonData"]["timeInterval"] == PROMETHEUS["global"]["scrape_interval"]


# --- prometheus/prometheus.yml ----------------------------------------------------------------------------


def test_prometheus_rule_files_exist() -> None:
    base = REPO_ROOT / "prometheus"
    names = PROMETHEUS["rule_files"]
    assert set(names) == {"alerts.yml", "recording.yml"}
    for name in names:
        assert (base / name).is_file(), name


def test_prometheus_scrapes_sidecars_through_file_sd() -> None:
    jobs = {j["job_name"]: j for j in PROMETHEUS["scrape_configs"]}
    job = jobs["sidecar"]
    assert job.get("scrape_interval", PROMETHEUS["global"]["scrape_interval"]) == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    files: list[Path] = []
    for sd in job["file_sd_configs"]:
        for pattern in sd["files"]:
            assert pattern.startswith("targets/")
            files += sorted((REPO_ROOT / "prometheus").glob(pattern))
    assert files, "no file_sd target file"
    targets = [t for f in files for group in yaml.safe_load(f.read_text()) for t in group["targets"]]
    assert sorted(targets) == sorted(f"{name}:{PORT}" for name in SIDECARS)
    assert all(t.split(":")[0] in SERVICES for t in targets)


# --- Dockerfile ----------------------------------------------------------------------------------------


def test_dockerfile() -> None:
    assert dockerfile("FROM")[0].startswith("python:3.11-slim")
    users = dockerfile("USER")
    assert users, "Dockerfile must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    env = dockerfile_env()
    assert env["SIDECAR_DATA_DIR"] == "/var/lib/sidecar"
    assert env["SIDECAR_BIND"] == f"0.0.0.0:{PORT}"
    assert dockerfile("EXPOSE") == [str(PORT)]
    healthchecks = dockerfile("HEALTHCHECK")
    assert len(healthchecks) == 1 and f"http://127.0.0.1:{PORT}/healthz" in healthchecks[0]
    assert "urllib" in healthchecks[0] and "curl" not in healthchecks[0]
    assert dockerfile("CMD") == ['["sidecar", "serve"]']
    assert any(re.search(r"\bpip install \.", run) for run in dockerfile("RUN"))


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in dockerfile_copy_sources():
        path = source.rstrip("/")
        assert (REPO_ROOT / path).exists(), f"COPY {source}: missing from the repository"
        for pattern in ignored:
            assert not pattern.startswith("!"), "keep .dockerignore simple: no exceptions"
            assert not fnmatch.fnmatch(path, pattern.rstrip("/")), f"COPY {source} is excluded by {pattern}"


def test_dockerfile_uid_matches_kubernetes() -> None:
    run = " ".join(dockerfile("RUN"))
    uid = re.search(r"useradd .*--uid (\d+)", run)
    assert uid, "create the user with a fixed --uid"
    sidecar = _sidecar_container()
    assert sidecar["securityContext"]["runAsUser"] == int(uid.group(1))


# --- Kubernetes ------------------------------------------------------------------------------------------


def _deployment() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((K8S / "deployment.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == "Deployment")


def _sidecar_container() -> dict[str, Any]:
    containers = _deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "sidecar")


def test_deployment_selector_matches_pod_labels() -> None:
    spec = _deployment()["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert len(spec["template"]["spec"]["containers"]) >= 2, "an app container and the sidecar"


def test_deployment_sidecar_container() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    sidecar = _sidecar_container()
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"metrics": PORT}
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["SIDECAR_BIND"] == f"0.0.0.0:{PORT}"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # not /readyz: a history fault must not take the application's pod out of its Service
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"]["port"] in ("metrics", PORT)
    assert "command" not in sidecar and "args" not in sidecar, "the image's CMD starts the server"
    resources = sidecar["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    data_dir = env.get("SIDECAR_DATA_DIR") or dockerfile_env()["SIDECAR_DATA_DIR"]
    assert mounts[data_dir] in volumes
    if security.get("readOnlyRootFilesystem"):
        assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def test_podmonitor_selects_the_pods_on_the_metrics_port() -> None:
    monitor = yaml.safe_load((K8S / "podmonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for p in _sidecar_container()["ports"]}
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert [e["port"] for e in endpoints] == ["metrics"]
    assert endpoints[0]["port"] in port_names
    assert endpoints[0].get("path", "/metrics") == "/metrics"
    # The rules select up{job="sidecar"}: the PodMonitor must produce that job label.
    relabel = [r for r in endpoints[0].get("relabelings", []) if r.get("targetLabel") == "job"]
    assert relabel and relabel[-1]["replacement"] == "sidecar"


def test_prometheusrule_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(K8S / "generate_prometheusrule.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheusrule_check_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(
        (K8S / "prometheusrule.yaml").read_text().replace("severity: warning", "severity: info", 1)
    )
    script = str(K8S / "generate_prometheusrule.py")
    proc = subprocess.run(
        [sys.executable, script, "--check", "--output", str(stale)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stale" in proc.stderr
    regenerate = subprocess.run([sys.executable, script, "--output", str(stale)], timeout=60, check=False)
    assert regenerate.returncode == 0
    assert stale.read_text() == (K8S / "prometheusrule.yaml").read_text()


def test_prometheusrule_carries_every_rule() -> None:
    manifest = yaml.safe_load((K8S / "prometheusrule.yaml").read_text().split("---\n", 1)[1])
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    groups = load_yaml("prometheus/recording.yml")["groups"] + load_yaml("prometheus/alerts.yml")["groups"]
    assert manifest["spec"]["groups"] == groups


def test_kubernetes_token_secret_is_required_as_documented() -> None:
    """A missing Secret must keep the pod waiting (the run routes would otherwise serve unauthenticated on the
    pod network), and the docs must say it is required."""
    volumes = {v["name"]: v for v in _deployment()["spec"]["template"]["spec"]["volumes"]}
    secret = next(v["secret"] for v in volumes.values() if "secret" in v)
    assert secret.get("optional", False) is False
    env = {e["name"]: e.get("value") for e in _sidecar_container()["env"]}
    assert env["SIDECAR_API_TOKEN_FILE"].startswith("/run/secrets/")
    docs = (K8S / "README.md").read_text()
    create = next(line for line in docs.splitlines() if "kubectl create secret" in line)
    assert create.rstrip().endswith("# required"), create
    assert "The Secret is required" in docs
