"""The Kubernetes deployment (deploy/kubernetes) rendered, validated offline, and held to the code.

Each overlay is rendered with `kubectl kustomize`; every object is validated against the schemas
of a pinned Kubernetes release by kubernetes-validate (strict: unknown fields fail). Consistency
with the project: ports, probe paths, images, flags, env vars and mounts agree with compose and the
code; every metric the HPA rules and the Grafana dashboard use is exported by the real embedded
server; and the adapter's queue-time expression, computed by a real Prometheus scraping the real
server, rises under Locust load and falls at rest.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_compose import (
    COMPOSE_FILE,
    DASHBOARD_FILE,
    PROMETHEUS_FILE,
    SERVER_TRITON,
    command_of,
    constants,
    flag_values,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "loadtest")
#: Kubernetes release the manifests are validated against (kubectl here is 1.32).
K8S_VERSION = "1.32.0"
#: Custom resources the Kubernetes schemas do not cover, with why they are not schema-checked:
#: their structure is checked by the tests below instead.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-operator CRD, not a core API",
}
#: The rule from Triton's deployment chart that the issue asks for, verbatim.
QUEUE_EXPRESSION = (
    "avg(delta(nv_inference_queue_duration_us[30s])/(1+delta(nv_inference_request_success[30s])))"
)
#: Metrics Triton exports only with a GPU (the embedded server runs with --allow-gpu-metrics=false
#: on a CPU): looked up in the bundled libtritonserver instead of /metrics.
GPU_ONLY_METRICS = {"nv_gpu_utilization"}
SERVE_DEFAULTS = constants(SERVER_TRITON, scope="ServerConfig")
PORTS = {
    "http": SERVE_DEFAULTS["http_port"],
    "grpc": SERVE_DEFAULTS["grpc_port"],
    "metrics": SERVE_DEFAULTS["metrics_port"],
}
PROMQL_METRIC = re.compile(r"\bnv_[a-z_]+\b")
TEMPLATE = re.compile(r"\{?<<\.(LabelMatchers|GroupBy)>>\}?")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not installed (it bundles kustomize)")
    return path


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for an overlay."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (match,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return match


def pod_spec(docs: list[dict[str, Any]], name: str = "triton") -> dict[str, Any]:
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]


def container(docs: list[dict[str, Any]], name: str = "triton") -> dict[str, Any]:
    (match,) = [c for c in pod_spec(docs)["containers"] if c["name"] == name]
    return match


def adapter_rules(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """prometheus-adapter rules by the custom metric name they publish."""
    config = find(docs, "ConfigMap", "prometheus-adapter-cxr")
    assert config["metadata"]["namespace"] == "monitoring"
    rules = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    return {rule["name"]["as"]: rule for rule in rules}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v.get("query")]
    return exprs


def probe_url(probe: dict[str, Any], ports: dict[str, int]) -> tuple[int, str]:
    """(port, path) an httpGet or exec (python urllib on loopback) probe asks."""
    if "httpGet" in probe:
        port = probe["httpGet"]["port"]
        return (ports[port] if isinstance(port, str) else port), probe["httpGet"]["path"]
    (url,) = re.findall(r"http://127\.0\.0\.1:\d+/[\w/]+", " ".join(probe["exec"]["command"]))
    parsed = urllib.parse.urlsplit(url)
    return int(parsed.port or 0), parsed.path


# --- rendering and schema validation ---------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_pinned_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    import kubernetes_validate

    unknown = set()
    for doc in rendered[overlay]:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add((doc["apiVersion"], doc["kind"]))
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {err.message}")
    assert unknown == set(CRD_KINDS), f"kinds without a schema, not listed: {unknown}"
    kinds = {d["kind"] for d in rendered[overlay]}
    assert kinds >= {
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "ConfigMap",
        "ServiceMonitor",
    }


def test_the_validator_rejects_a_broken_deployment(rendered: dict[str, list[dict]]) -> None:
    import kubernetes_validate

    good = find(rendered["cpu"], "Deployment", "triton")
    kubernetes_validate.validate(good, K8S_VERSION, strict=True)
    typo = copy.deepcopy(good)
    typo["spec"]["template"]["spec"]["containers"][0]["port"] = 8001  # `ports` misspelt
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_servicemonitor_scrapes_the_metrics_port_at_composes_interval(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "triton"]
    for overlay, docs in rendered.items():
        monitor = find(docs, "ServiceMonitor", "triton")
        service = find(docs, "Service", "triton")
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), overlay
        assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == job["metrics_path"]
        assert endpoint["interval"] == job["scrape_interval"]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- consistency with compose and the code ---------------------------------------------------
def test_ports_services_and_networkpolicy_keep_admin_and_metrics_in_the_cluster(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    compose = resolve(yaml.safe_load(COMPOSE_FILE.read_text()), {"CXR_ADMIN_KEY": "k"})
    compose_args = command_of(compose["services"]["triton"])
    for flag, name in (
        ("--http-port", "http"),
        ("--grpc-port", "grpc"),
        ("--metrics-port", "metrics"),
    ):
        assert flag_values(compose_args, flag) == [str(PORTS[name])]
    for overlay, docs in rendered.items():
        ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
        assert ports == PORTS, overlay
        service = find(docs, "Service", "triton")
        assert service["spec"]["type"] == "ClusterIP"
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == PORTS
        policy = find(docs, "NetworkPolicy", "triton")["spec"]
        template_labels = find(docs, "Deployment", "triton")["spec"]["template"]["metadata"]
        assert policy["podSelector"]["matchLabels"].items() <= template_labels["labels"].items()
        open_ports, cluster_ports = set(), set()
        for rule in policy["ingress"]:
            names = {p["port"] for p in rule["ports"]}
            sources = rule.get("from")
            if not sources:
                open_ports |= names
                continue
            assert all(s == {"namespaceSelector": {}} for s in sources), "in-cluster pods only"
            cluster_ports |= names
        assert open_ports == {"grpc"}, f"{overlay}: only gRPC may be reached from outside"
        assert cluster_ports == {"http", "metrics"}
        external = [
            d
            for d in docs
            if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")
        ]
        for svc in external:
            assert [p["name"] for p in svc["spec"]["ports"]] == ["grpc"], svc["metadata"]["name"]
        server = container(docs)
        tls = any("/tls/" in arg for arg in server.get("command", []) + server.get("args", []))
        assert bool(external) == tls == (overlay != "loadtest"), "outside access only with TLS"


def test_probes_use_live_for_liveness_ready_for_readiness_and_give_startup_minutes(
    rendered: dict[str, list[dict[str, Any]]], triton: Any
) -> None:
    for overlay, docs in rendered.items():
        triton_container = container(docs)
        ports = {p["name"]: p["containerPort"] for p in triton_container["ports"]}
        probes = {
            k: triton_container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert probe_url(probes["livenessProbe"], ports) == (PORTS["http"], "/v2/health/live")
        assert probe_url(probes["readinessProbe"], ports) == (PORTS["http"], "/v2/health/ready")
        assert probe_url(probes["startupProbe"], ports) == (PORTS["http"], "/v2/health/ready")
        startup = probes["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "minutes to load"
        liveness = probes["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] < 300
        if overlay == "gpu":
            assert all("httpGet" in p for p in probes.values())
    # The paths the probes ask answer 200 on the real embedded server.
    for path in ("/v2/health/live", "/v2/health/ready"):
        with urllib.request.urlopen(f"{triton.http_url}{path}", timeout=10) as response:
            assert response.status == 200, path


def test_cpu_exec_probes_pass_on_a_serving_server_and_fail_without_one(
    rendered: dict[str, list[dict[str, Any]]], triton: Any
) -> None:
    """The embedded runtime's exec probes, run as the kubelet runs them (port moved to the
    fixture's): exit 0 against the real server, non-zero where nothing listens."""
    from cxr.server.triton import free_port

    server_port = urllib.parse.urlsplit(triton.http_url).port
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        command = container(rendered["cpu"])[name]["exec"]["command"]
        assert command[0] == "python3"
        for port, expect_ok in ((server_port, True), (free_port(), False)):
            script = command[-1].replace(f":{PORTS['http']}/", f":{port}/")
            done = subprocess.run(
                [sys.executable, *command[1:-1], script],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert (done.returncode == 0) == expect_ok, (name, port, done.stderr[-300:])


def test_gpu_runs_composes_triton_command_and_builds_engines_in_the_same_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    compose = resolve(
        yaml.safe_load(COMPOSE_FILE.read_text()), {"CXR_ADMIN_KEY": "$(CXR_ADMIN_KEY)"}
    )
    services = compose["services"]
    docs = rendered["gpu"]
    spec = pod_spec(docs)
    server = container(docs)
    compose_args = command_of(services["triton"])
    assert server["command"] == compose_args[:1]
    assert set(compose_args[1:]) <= set(server["args"]), "compose's tritonserver flags"
    assert set(server["args"]) - set(compose_args) == {
        f"--exit-timeout-secs={constants(SERVER_TRITON)['EXIT_TIMEOUT_S']}",
        "--grpc-use-ssl=true",
        "--grpc-server-cert=/tls/tls.crt",
        "--grpc-server-key=/tls/tls.key",
    }
    env = {e["name"]: e for e in server["env"]}
    embedded = constants(SERVER_TRITON)
    assert env[embedded["ADMIN_KEY_ENV"]]["valueFrom"]["secretKeyRef"]["name"] == "cxr-admin-key"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    (engines,) = spec["initContainers"]
    assert engines["image"] == server["image"], "a plan loads only in the TensorRT that built it"
    assert engines["command"] == command_of(services["engines"])
    assert "COPY docker/build_engines.sh /usr/local/bin/cxr-build-engines" in (
        ROOT / "docker" / "Dockerfile"
    ).read_text(encoding="utf-8")
    name, tag = server["image"].rsplit(":", 1)
    assert services["triton"]["image"] == f"{name}:{tag}", "compose's default TRITON_TAG"
    mounts = {m["name"]: m for m in engines["volumeMounts"]}
    (rw,) = [v for v in spec["volumes"] if v["name"] in mounts and "persistentVolumeClaim" in v]
    assert not rw["persistentVolumeClaim"].get("readOnly") and not mounts[rw["name"]].get(
        "readOnly"
    )
    assert mounts[rw["name"]]["mountPath"] == "/models"


def test_cpu_runs_cxr_serve_with_options_it_has_in_the_image_built_here(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dockerfile = (ROOT / "docker" / "Dockerfile.cpu").read_text(encoding="utf-8")
    assert '"/tmp/cxr-triage[serve,fast]"' in dockerfile and "USER triton" in dockerfile
    assert (ROOT / "docker" / "Dockerfile.cpu.dockerignore").is_file()
    for overlay in ("cpu", "loadtest"):
        server = container(rendered[overlay])
        assert server["image"] == f"cxr-triage-cpu:{project['version']}"
        command = server["command"]
        assert command[:2] == ["cxr", "serve"]
        assert flag_values(command, "--repo") == ["/models"]
        assert flag_values(command, "--host") == ["0.0.0.0"]
        help_text = subprocess.run(
            [sys.executable, "-m", "cxr", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        ).stdout
        for option in (a.split("=")[0] for a in command[2:] if a.startswith("--")):
            assert option in help_text, f"cxr serve has no {option}"
        env = {e["name"] for e in server["env"]}
        assert constants(SERVER_TRITON)["ADMIN_KEY_ENV"] in env, "cxr serve reads the admin key"
        assert pod_spec(rendered[overlay])["securityContext"]["runAsUser"] == 10001


def test_model_repository_comes_from_the_pvc_read_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert "./model_repository:/models:ro" in compose["services"]["triton"]["volumes"]
    for overlay, docs in rendered.items():
        pvc = find(docs, "PersistentVolumeClaim", "model-repository")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "shared by every replica"
        spec = pod_spec(docs)
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in container(docs)["volumeMounts"] if m["mountPath"] == "/models"]
        claim = volumes[mount["name"]]["persistentVolumeClaim"]
        assert claim["claimName"] == pvc["metadata"]["name"] and claim["readOnly"], overlay
        assert mount["readOnly"]
        dshm = volumes[
            next(m["name"] for m in container(docs)["volumeMounts"] if m["mountPath"] == "/dev/shm")
        ]
        assert dshm["emptyDir"]["medium"] == "Memory"


def test_tls_secret_made_by_kubectl_from_dev_certs_validates_and_has_the_mounted_keys(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    import kubernetes_validate

    from cxr.server.certs import make_dev_certs

    certs = make_dev_certs(tmp_path, ("triton.cxr-triage.svc", "localhost"))
    done = subprocess.run(
        [
            kubectl(),
            "create",
            "secret",
            "tls",
            "cxr-grpc-tls",
            "--namespace=cxr-triage",
            f"--cert={certs.server_cert}",
            f"--key={certs.server_key}",
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    secret = yaml.safe_load(done.stdout)
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    for overlay in ("cpu", "gpu"):
        spec = pod_spec(rendered[overlay])
        (volume,) = [v for v in spec["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        (mount,) = [
            m for m in container(rendered[overlay])["volumeMounts"] if m["name"] == volume["name"]
        ]
        server = container(rendered[overlay])
        files = re.findall(
            rf"{mount['mountPath']}/([\w.]+)",
            " ".join(server.get("command", []) + server.get("args", [])),
        )
        assert sorted(files) == ["tls.crt", "tls.key"] and set(files) <= set(secret["data"])


def test_locust_master_and_workers_match_compose_and_the_locustfile(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    docs = rendered["loadtest"]
    locustfile = (ROOT / "loadtest" / "locustfile.py").read_text(encoding="utf-8")
    settings = find(docs, "ConfigMap", "locust-settings")["data"]
    assert set(settings) == set(compose["x-loadtest-image"]["environment"])
    for name in settings:
        assert f'os.environ.get("{name}")' in locustfile, f"the locustfile does not read {name}"
    master, worker = find(docs, "Deployment", "locust"), find(docs, "Deployment", "locust-worker")
    (m,), (w,) = (
        master["spec"]["template"]["spec"]["containers"],
        worker["spec"]["template"]["spec"]["containers"],
    )
    assert m["image"] == w["image"] == compose["x-loadtest-image"]["image"]
    assert flag_values(m["command"], "--host") == [f"triton:{PORTS['grpc']}"]
    service = find(docs, "Service", "locust")
    assert flag_values(w["command"], "--master-host") == [service["metadata"]["name"]]
    assert {p["port"] for p in service["spec"]["ports"]} == {8089, 5557}
    for args in (m["command"], w["command"]):
        (path,) = flag_values(args, "-f")
        assert (ROOT / path.removeprefix("/app/")).is_file()
    for overlay in ("cpu", "gpu"):
        assert not [d for d in rendered[overlay] if d["metadata"]["name"].startswith("locust")]


def test_hpa_uses_the_adapter_rules_and_the_queue_rule_is_tritons(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        rules = adapter_rules(docs)
        queue = rules["avg_time_queue_us"]
        assert TEMPLATE.sub("", queue["metricsQuery"]).replace(" by ()", "") == QUEUE_EXPRESSION
        for rule in rules.values():
            assert rule["seriesQuery"].endswith('{namespace!="",pod!=""}'), "maps to pods"
            assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
            assert rule["metricsQuery"].endswith("by (<<.GroupBy>>)")
        hpa = find(docs, "HorizontalPodAutoscaler", "triton")["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "triton",
        }
        metrics = {m["pods"]["metric"]["name"] for m in hpa["metrics"]}
        assert metrics <= set(rules)
        expected = (
            {"avg_time_queue_us", "gpu_utilization"} if overlay == "gpu" else {"avg_time_queue_us"}
        )
        assert metrics == expected, overlay
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
        pdb = find(docs, "PodDisruptionBudget", "triton")["spec"]
        assert pdb["maxUnavailable"] < hpa["minReplicas"], "a drain never empties the service"
        resources = container(docs)["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["memory"]


def test_dashboard_configmap_is_the_compose_dashboard(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in rendered.values():
        config = find(docs, "ConfigMap", "cxr-triage-dashboard")
        assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config["data"] == {"cxr-triage.json": DASHBOARD_FILE.read_text(encoding="utf-8")}


# --- against the real embedded server --------------------------------------------------------
def metric_names(text: str) -> set[str]:
    """Names of the metric families in a Prometheus text exposition."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_every_metric_of_the_hpa_rules_and_the_dashboard_is_exported_by_the_server(
    rendered: dict[str, list[dict[str, Any]]], triton: Any, synthetic_data: Path
) -> None:
    from cxr.client.contract import ENSEMBLE_MODEL, PREPROCESS_MODEL
    from cxr.client.sync_client import TriageClient
    from cxr.server.triton import pytriton_dir

    image = next((synthetic_data / "test").rglob("*.png"))
    with TriageClient(triton.grpc_url, server_preprocess=True) as client:
        (result,) = client.predict([image])
    assert hasattr(result, "label"), result
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        exposition = response.read().decode()
    exported = metric_names(exposition)

    queries = [
        rule["metricsQuery"] for docs in rendered.values() for rule in adapter_rules(docs).values()
    ]
    queries += [
        rule["seriesQuery"] for docs in rendered.values() for rule in adapter_rules(docs).values()
    ]
    queries += dashboard_exprs()
    used = {name for query in queries for name in PROMQL_METRIC.findall(query)}
    assert len(used) >= 10, used
    # A summary's family is exported as NAME and read as NAME, NAME_sum or NAME_count.
    families = {
        n if n in exported else re.sub(r"_(sum|count)$", "", n) for n in used - GPU_ONLY_METRICS
    }
    missing = families - exported
    assert not missing, f"not exported by the embedded server: {sorted(missing)}"
    (library,) = (pytriton_dir().parent.parent / "nvidia_pytriton.libs").glob("libtritonserver*.so")
    binary = library.read_bytes()
    for name in GPU_ONLY_METRICS & used:
        assert name.encode() in binary, f"{name} is not a metric of this Triton release"
    # The dashboard's model variable lists the contract's models.
    models = set(re.findall(r'nv_inference_request_success\{[^}]*model="([^"]+)"', exposition))
    assert {ENSEMBLE_MODEL, PREPROCESS_MODEL} <= models


@pytest.mark.parametrize("overlay", ["cpu", "loadtest"])
def test_the_embedded_server_accepts_its_command_and_exposes_metrics(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    from cxr.server.triton import TLS, ServerConfig, check_exposure

    command = container(rendered[overlay])["command"]
    (host,) = flag_values(command, "--host")
    (metrics_host,) = flag_values(command, "--metrics-host")
    tls = flag_values(command, "--tls-cert")
    config = ServerConfig(
        Path("/models"),
        host=host,
        metrics_host=metrics_host,
        admin_key="from the cxr-admin-key Secret",
        tls=TLS(Path(tls[0]), Path(flag_values(command, "--tls-key")[0])) if tls else None,
        insecure="--insecure" in command,
    )
    check_exposure(config)  # what `cxr serve` checks before it starts: no refusal
    assert metrics_host == "0.0.0.0", "the ServiceMonitor scrapes the pod's address"
    assert bool(tls) != ("--insecure" in command), "plain text only where asked for"


# --- the autoscaling signal, measured -------------------------------------------------------
@pytest.fixture
def prometheus(triton: Any, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the embedded server every second; yields its base URL."""
    from cxr.server.triton import free_port

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed: apt-get install -y prometheus")
    target = urllib.parse.urlsplit(triton.metrics_url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "triton", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={address}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 120  # starts in ~1 s
        while not _ready(url):
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def instant(url: str, query: str) -> float | None:
    """The value of a one-series PromQL query now (None: no series yet)."""
    params = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def sample_while(url: str, query: str, running: threading.Event) -> list[float]:
    values = []
    while running.is_set():
        value = instant(url, query)
        if value is not None:
            values.append(value)
        time.sleep(1)
    return values


def test_queue_time_expression_rises_under_locust_load_and_falls_at_rest(
    rendered: dict[str, list[dict[str, Any]]], triton: Any, prometheus: str, tmp_path: Path
) -> None:
    """The adapter's own metricsQuery (matchers: this scrape job; grouped per job, as the adapter
    groups per pod), computed by Prometheus while `cxr loadtest run` loads the server."""
    rule = adapter_rules(rendered["cpu"])["avg_time_queue_us"]["metricsQuery"]
    query = rule.replace("<<.LabelMatchers>>", 'job="triton"').replace("<<.GroupBy>>", "job")
    scraped = 'up{job="triton"}'
    deadline = time.monotonic() + 120  # two scrapes take ~2 s
    while instant(prometheus, f"count_over_time({scraped}[1m])") in (None, 1.0):
        assert time.monotonic() < deadline, "prometheus does not scrape the server"
        time.sleep(0.5)
    assert instant(prometheus, scraped) == 1.0

    running = threading.Event()
    running.set()
    values: list[float] = []
    sampler = threading.Thread(
        target=lambda: values.extend(sample_while(prometheus, query, running))
    )
    sampler.start()
    try:
        load = subprocess.run(
            [
                sys.executable,
                "-m",
                "cxr",
                "loadtest",
                "run",
                "--url",
                triton.grpc_url,
                "--users",
                "16",
                "--duration",
                "20s",
                "--warmup",
                "1s",
                "--slo-p99-ms",
                "60000",
                "--slo-stat-p99-ms",
                "60000",
                "--max-error-rate",
                "0.01",  # load, not errors, is under test
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
    finally:
        running.clear()
        sampler.join()
    assert load.returncode == 0, load.stdout + load.stderr
    assert values, "no value of the expression during the load"
    peak = max(values)
    assert peak > 0, f"queue time never rose under load: {values}"

    # At rest the 30 s window empties: the value falls to a tenth of the peak (in fact 0).
    deadline = time.monotonic() + 330  # ~31 s expected; 10x margin to detect a hang only
    rest = instant(prometheus, query)
    while rest is None or rest > peak / 10:
        assert time.monotonic() < deadline, f"queue time stayed at {rest} (peak {peak})"
        time.sleep(1)
        rest = instant(prometheus, query)
    print(f"queue-time expression: peak {peak:.0f} us under load, {rest:.0f} us at rest")
