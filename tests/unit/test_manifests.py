"""deploy/: every manifest parses, and names only endpoints, ports and metrics that exist.

Routes come from the real app (built, not started), the port from Settings, metric names from the
Prometheus registry the service exposes; nothing is copied into the test by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFESTS for doc in load(path)]


def of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in all_docs() if doc.get("kind") == kind]


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    # The OpenAPI schema lists every included router's routes (app.routes may hold them nested).
    paths = create_app(Settings()).openapi()["paths"]
    return {path for path, operations in paths.items() if "get" in operations}


@pytest.fixture(scope="module")
def metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def pod_containers() -> list[dict]:
    """Containers of every Deployment and InferenceService predictor."""
    found = []
    for doc in of_kind("Deployment"):
        found += doc["spec"]["template"]["spec"]["containers"]
    for doc in of_kind("InferenceService"):
        found += doc["spec"]["predictor"]["containers"]
    return found


def test_every_manifest_parses():
    assert MANIFESTS, "deploy/ has no YAML"
    for path in MANIFESTS:
        assert load(path), f"{path} is empty"
    kinds = {doc.get("kind") for _, doc in all_docs()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "InferenceService"} <= kinds


def test_the_routes_the_manifests_rely_on_exist(get_routes):
    assert {"/healthz", "/readyz", "/metrics", "/v1/models"} <= get_routes


def test_containers_serve_on_the_service_port_and_probe_real_endpoints(get_routes):
    port = Settings.model_fields["port"].default
    containers = pod_containers()
    assert containers
    for container in containers:
        ports = container["ports"]
        assert [p["containerPort"] for p in ports] == [port], f"{container['name']}: serve on {port}"
        names = {p.get("name") for p in ports} - {None}
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in PROBES:
            if probe not in container:
                continue
            http = container[probe]["httpGet"]
            assert http["path"] in get_routes, f"{container['name']} {probe}: {http['path']} is not a GET route"
            probe_port = http.get("port", port)  # Knative (KServe) probes name no port: the one container port
            assert probe_port in names or probe_port == port, f"{container['name']} {probe}: port {probe_port}"
        args = container.get("args", [])
        if "--port" in args:
            assert int(args[args.index("--port") + 1]) == port


def test_gpu_pods_ask_for_one_gpu():
    for container in pod_containers():
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_container_args_are_service_flags():
    from service.__main__ import get_args_parser

    known = {opt for action in get_args_parser()._actions for opt in action.option_strings}
    for container in pod_containers():
        for arg in container.get("args", []):
            if arg.startswith("--"):
                assert arg in known, f"{arg} is not a flag of python -m service"
        for env in container.get("env", []):
            name = env["name"]
            if name.startswith("ALEXNET_"):
                assert name[len("ALEXNET_") :].lower() in Settings.model_fields, f"{name} is not a setting"


def test_service_targets_the_deployments_port():
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        matching = [
            d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching, f"Service {service['metadata']['name']} selects no Deployment"
        container_ports = {
            (p.get("name"), p["containerPort"])
            for d in matching
            for c in d["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert any(target in pair for pair in container_ports), f"targetPort {target} is no container port"


def test_prometheus_scrape_annotations_match(get_routes):
    port = Settings.model_fields["port"].default
    for deployment in of_kind("Deployment"):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] in get_routes
        assert int(annotations["prometheus.io/port"]) == port


def test_autoscaler_scales_the_deployment_on_an_exposed_metric(metric_names):
    deployments = {d["metadata"]["name"] for d in of_kind("Deployment")}
    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for metric in hpa["spec"]["metrics"]:
        spec = metric.get("pods") or metric.get("object") or metric.get("external")
        assert spec["metric"]["name"] in metric_names, f"{spec['metric']['name']} is not a service metric"
    adapter = load(DEPLOY / "k8s" / "prometheus-adapter-values.yaml")[0]
    for rule in adapter["rules"]["custom"]:
        assert re.match(r"\w+", rule["seriesQuery"]).group(0) in metric_names
        assert rule["name"]["as"] in {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}


def test_compose_serves_the_port_and_prometheus_scrapes_metrics(get_routes):
    port = Settings.model_fields["port"].default
    compose = load(DEPLOY / "docker-compose.yml")[0]
    apps = {name: s for name, s in compose["services"].items() if name.startswith("alexnet")}
    assert apps
    for name, service in apps.items():
        assert any(str(p).endswith(f":{port}") for p in service["ports"]), name
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert "alexnet" in service["networks"]["default"]["aliases"]
    mount = compose["services"]["prometheus"]["volumes"][0].split(":")[0]
    config = load(DEPLOY / mount)[0]
    for job in config["scrape_configs"]:
        assert job["metrics_path"] in get_routes
        for target in job["static_configs"][0]["targets"]:
            host, target_port = target.split(":")
            assert host == "alexnet" and int(target_port) == port


def test_kustomization_applies_every_kubernetes_resource():
    k8s = DEPLOY / "k8s"
    (kustomization,) = load(k8s / "kustomization.yaml")
    resources = {
        path.name
        for path in k8s.glob("*.yaml")
        if any("kind" in doc and doc["kind"] != "Kustomization" for doc in load(path))
    }
    assert set(kustomization["resources"]) == resources
