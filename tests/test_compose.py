"""The GPU deployment (docker-compose.yml, docker/) against the compose format and the repository.

Runs without a Docker engine or a GPU: the compose file is parsed with PyYAML and checked for the
essentials of the format and for consistency with the project (paths, image, ports, admin
restriction, Prometheus target, Grafana dashboard). When a compose binary is installed (`docker
compose` plugin or `docker-compose` >= 1.29), its own `config -q` validates the file too.
build_engines.sh is exercised with a fake trtexec and nvidia-smi.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENGINE_SCRIPT = ROOT / "docker" / "build_engines.sh"
PROMETHEUS_FILE = ROOT / "docker" / "prometheus.yml"
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "cxr-triage.json"

SERVICES = {"engines", "triton", "locust", "locust-worker", "prometheus", "grafana"}
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
ADMIN_PROTOCOLS = {"model-repository", "shared-memory", "statistics", "trace", "logging"}
TEST_KEY = "compose-test-key"

# Compose-spec service keys this project may use (a typo such as `port:` fails the check).
SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "deploy", "entrypoint", "environment",
    "env_file", "healthcheck", "image", "init", "ipc", "labels", "logging", "networks",
    "platform", "ports", "profiles", "pull_policy", "read_only", "restart", "security_opt",
    "shm_size", "stop_grace_period", "tmpfs", "ulimits", "user", "volumes", "working_dir",
}  # fmt: skip
TOP_KEYS = {"services", "volumes", "networks", "configs", "secrets"}
RESTART_POLICIES = {"no", "always", "on-failure", "unless-stopped"}
DEPENDS_CONDITIONS = {
    "service_started", "service_healthy", "service_completed_successfully",
}  # fmt: skip

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        have = env.get(name)
        if op in (":-", "-"):
            return have if have or (op == "-" and have is not None) else arg
        if op in (":?", "?") and not (have if op == ":?" else have is not None):
            raise KeyError(f"{name}: {arg}")
        return have or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def constants(path: Path, scope: str | None = None) -> dict[str, Any]:
    """Literal assignments at module level (or in class `scope`) of a project source file.

    Read with ast, not imported: the deployment checks must not depend on the package being
    installed or on its optional dependencies.
    """
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if scope is not None:
        (cls,) = [n for n in body if isinstance(n, ast.ClassDef) and n.name == scope]
        body = cls.body
    out: dict[str, Any] = {}
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            out[target.id] = value.value
    return out


SERVER_TRITON = ROOT / "server" / "triton.py"
CONTRACT = ROOT / "client" / "contract.py"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)  # SafeLoader resolves the `<<: *anchor` merge keys
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file with variables substituted (CXR_ADMIN_KEY set, everything else default)."""
    return resolve(raw, {"CXR_ADMIN_KEY": TEST_KEY})


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of `--flag=value` and `--flag value` in an argument list."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(f"{flag}="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
    return values


def parse_port(entry: Any) -> tuple[str, int | None, int]:
    """(host_ip, published, target) of a short- or long-syntax port; host_ip "" means all."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return (
            str(entry.get("host_ip", "")),
            int(published) if published else None,
            int(entry["target"]),
        )
    text = str(entry).split("/", 1)[0]
    parts = text.rsplit(":", 2) if text.count(":") >= 2 else text.split(":")
    if len(parts) == 3:
        return parts[0].strip("[]"), int(parts[1]), int(parts[2])
    if len(parts) == 2:
        return "", int(parts[0]), int(parts[1])
    return "", None, int(parts[0])


def binds(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) of every volume entry (short or long syntax)."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            mode = "ro" if entry.get("read_only") else "rw"
            out.append((str(entry["source"]), str(entry["target"]), mode))
            continue
        parts = str(entry).split(":")
        assert len(parts) in (2, 3), f"volume entry {entry!r} is not SOURCE:TARGET[:MODE]"
        out.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    return out


def is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def gpu_reserved(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return any("gpu" in d.get("capabilities", []) for d in devices.get("devices", []))


# --- the compose format ----------------------------------------------------------------------
def test_compose_file_has_the_services_and_the_format_essentials(raw: dict[str, Any]) -> None:
    unknown_top = {k for k in raw if k not in TOP_KEYS and not k.startswith("x-")}
    assert not unknown_top, f"unknown top-level keys: {unknown_top}"
    services = raw["services"]
    assert set(services) >= SERVICES, f"missing services: {SERVICES - set(services)}"
    for name, service in services.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name), f"bad service name {name!r}"
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown service keys {unknown}"
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        assert isinstance(service.get("command", []), list), f"{name}: use an exec-form command"
        restart = str(service.get("restart", "no"))
        assert restart in RESTART_POLICIES or restart.startswith("on-failure:"), name
        depends = service.get("depends_on", {})
        if isinstance(depends, dict):
            for dep, spec in depends.items():
                assert dep in services, f"{name} depends on unknown service {dep}"
                assert spec.get("condition", "service_started") in DEPENDS_CONDITIONS
        else:
            assert set(depends) <= set(services), f"{name} depends on unknown services"
        for port in service.get("ports", []):
            parse_port(port)  # raises on a malformed entry
    declared_volumes = set(raw.get("volumes") or {})
    for name, service in services.items():
        for source, target, mode in binds(service):
            assert PurePosixPath(target).is_absolute(), (
                f"{name}: mount target {target} not absolute"
            )
            assert mode in {"ro", "rw"}, f"{name}: mount mode {mode}"
            if not is_host_path(source):
                assert source in declared_volumes, f"{name}: named volume {source} not declared"


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_validates_with_the_compose_binary() -> None:
    """`config -q` of the real compose implementation; needs no Docker daemon."""
    cmd = _compose_command()
    if cmd is None:
        pytest.skip(
            "no compose binary (neither the `docker compose` plugin nor `docker-compose`); "
            "install one (e.g. apt-get install docker-compose) to validate against its schema"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "CXR_"))}
    run = [*cmd, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config", "-q"]
    ok = subprocess.run(
        run, cwd=ROOT, env={**env, "CXR_ADMIN_KEY": TEST_KEY},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, f"{' '.join(run)} failed:\n{ok.stdout}\n{ok.stderr}"
    # Without the admin key the file refuses to render: no deployment with an open admin API.
    missing = subprocess.run(
        run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert missing.returncode != 0
    assert "CXR_ADMIN_KEY" in missing.stdout + missing.stderr


def test_compose_requires_the_admin_key_and_holds_no_secrets(raw: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="CXR_ADMIN_KEY"):
        resolve(raw, {})
    for name, service in raw["services"].items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            if re.search(r"KEY|PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"{name}: {key} is a literal, use ${{VAR}}"
    for arg in command_of(raw["services"]["triton"]):
        if "admin-key=" in arg:
            assert arg.split("admin-key=", 1)[1].startswith("${CXR_ADMIN_KEY:?"), arg


# --- consistency with the repository ---------------------------------------------------------
def test_build_contexts_dockerfiles_and_copied_paths_exist(compose: dict[str, Any]) -> None:
    seen = 0
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        seen += 1
        context = (
            ROOT / (build if isinstance(build, str) else build.get("context", "."))
        ).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / (
            build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
        )
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if not words or words[0].upper() not in {"COPY", "ADD"}:
                continue
            if any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            for source in sources:
                assert (context / source).exists(), (
                    f"{dockerfile.name}: COPY source {source} missing"
                )
    assert seen >= 2


def test_triton_image_is_the_ngc_server_with_the_project_installed(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG TRITON_TAG=\d\d\.\d\d\s*$", text, re.M), (
        "ARG TRITON_TAG=<yy.mm> default"
    )
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_TAG\}-py3\s*$", text, re.M)
    assert re.search(r'pip install "/tmp/cxr-triage\[fast\]".*onnxruntime', text), (
        "project with its compiled decoder, + onnxruntime"
    )
    assert "COPY docker/build_engines.sh /usr/local/bin/cxr-build-engines" in text
    build = compose["services"]["triton"]["build"]
    assert "TRITON_TAG" in build.get("args", {}), "compose passes TRITON_TAG to the build"
    loadtest = (ROOT / "docker" / "Dockerfile.loadtest").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\s*$", loadtest, re.M)
    assert "[loadtest]" in loadtest


def test_mounted_host_paths_exist(compose: dict[str, Any]) -> None:
    mounted = 0
    for name, service in compose["services"].items():
        for source, _target, _mode in binds(service):
            if is_host_path(source):
                mounted += 1
                path = (COMPOSE_FILE.parent / source).resolve()
                assert path.exists(), f"{name}: mounted {source} does not exist ({path})"
    assert mounted >= 4
    assert (ROOT / "model_repository").is_dir()


def test_engines_and_triton_run_the_same_image_on_the_same_repository(
    compose: dict[str, Any],
) -> None:
    engines, triton = compose["services"]["engines"], compose["services"]["triton"]
    assert engines["image"] == triton["image"]
    assert engines["image"].startswith("cxr-triage-triton")
    assert engines.get("build") == triton.get("build")
    assert gpu_reserved(engines), "engines must reserve a GPU (trtexec builds on it)"
    assert gpu_reserved(triton), "triton must reserve a GPU"
    assert triton["depends_on"]["engines"]["condition"] == "service_completed_successfully"
    assert str(engines.get("restart", "no")) == "no", "engines is one-shot"
    assert any("cxr-build-engines" in arg for arg in command_of(engines))
    engine_mounts = {t: (s, m) for s, t, m in binds(engines)}
    triton_mounts = {t: (s, m) for s, t, m in binds(triton)}
    assert engine_mounts["/models"] == ("./model_repository", "rw"), "engines writes the plans"
    assert triton_mounts["/models"] == ("./model_repository", "ro"), "triton serves read-only"


def test_engine_script_is_executable_and_parses() -> None:
    assert ENGINE_SCRIPT.is_file()
    assert ENGINE_SCRIPT.stat().st_mode & stat.S_IXUSR, "docker/build_engines.sh must be executable"
    assert ENGINE_SCRIPT.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    check = subprocess.run(
        [bash, "-n", str(ENGINE_SCRIPT)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stderr
    code = [ln for ln in ENGINE_SCRIPT.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert any('"--stronglyTyped"' in ln for ln in code)
    assert not any(re.search(r"--(fp16|int8|best)\b", ln) for ln in code), "strongly typed only"


FAKE_TRTEXEC = """#!/usr/bin/env bash
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100800] # trtexec $*"
[[ "${1:-}" == "--help" ]] && exit 0
printf '%s\\n' "$@" > "$FAKE_ARGS"
for a in "$@"; do case "$a" in --saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done
"""
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
case "$*" in *compute_cap*) echo "$FAKE_CC";; *) echo "NVIDIA Fake GPU";; esac
"""


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "python3", "sha256sum")),
    reason="needs bash, python3 and sha256sum",
)
def test_engine_script_builds_only_when_stale(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name, body in (("trtexec", FAKE_TRTEXEC), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (fake_bin / name).write_text(body)
        (fake_bin / name).chmod(0o755)
    repo = tmp_path / "model_repository"
    model = repo / "pneumonia_trt_int8"
    model.mkdir(parents=True)
    (model / "model.onnx").write_bytes(b"not a real onnx: size comes from IMAGE_SIZE")
    (model / "config.pbtxt").write_text('platform: "tensorrt_plan"\nmax_batch_size: 32\n')
    args_file = tmp_path / "trtexec.args"
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_ARGS": str(args_file),
        "FAKE_CC": "9.0",
        "IMAGE_SIZE": "64",
        "TRTEXEC": str(fake_bin / "trtexec"),
    }
    for var in ("MAX_BATCH", "OPT_BATCH", "TRT_MODELS", "FORCE_REBUILD", "TRTEXEC_EXTRA_ARGS"):
        env.pop(var, None)

    def build(**extra: str) -> subprocess.CompletedProcess[str]:
        args_file.unlink(missing_ok=True)
        return subprocess.run(
            ["bash", str(ENGINE_SCRIPT), str(repo)], env={**env, **extra},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    first = build()
    assert first.returncode == 0, first.stderr
    plan = model / "1" / "model.plan"
    assert plan.is_file()
    args = args_file.read_text().splitlines()
    assert "--stronglyTyped" in args
    assert "--minShapes=IMAGE:1x1x64x64" in args
    assert "--optShapes=IMAGE:16x1x64x64" in args
    assert "--maxShapes=IMAGE:32x1x64x64" in args  # config.pbtxt max_batch_size
    assert f"--timingCacheFile={model / 'timing.cache'}" in args
    assert not any(a in ("--fp16", "--int8") for a in args)
    stamp = json.loads((model / "1" / "model.plan.json").read_text())
    assert stamp["compute_capability"] == "9.0"
    assert stamp["tensorrt_version"] not in ("", "unknown")
    assert stamp["max_batch"] == 32 and stamp["image_size"] == 64
    assert len(stamp["onnx_sha256"]) == 64 and stamp["built_at"]

    again = build()
    assert again.returncode == 0, again.stderr
    assert not args_file.exists(), "an up-to-date engine was rebuilt"
    assert "up to date" in again.stderr

    other_gpu = build(FAKE_CC="8.9")
    assert other_gpu.returncode == 0 and args_file.exists(), "new GPU must rebuild"
    assert "compute_capability changed" in other_gpu.stderr

    past = time.time() - 60
    os.utime(plan, (past, past))  # the ONNX is now newer than the plan
    stale = build(FAKE_CC="8.9")
    assert stale.returncode == 0 and args_file.exists(), "a plan older than its ONNX is stale"

    too_small = build(FAKE_CC="8.9", MAX_BATCH="8")
    assert too_small.returncode != 0 and "max_batch_size 32" in too_small.stderr


def test_triton_serves_the_repository_with_admin_apis_behind_the_key(
    compose: dict[str, Any],
) -> None:
    embedded = constants(SERVER_TRITON)  # the embedded server's policy: one policy for both
    triton = compose["services"]["triton"]
    args = command_of(triton)
    assert args[0] == "tritonserver"
    assert flag_values(args, "--model-repository") == ["/models"]
    assert flag_values(args, "--model-control-mode") == ["none"]
    assert flag_values(args, "--strict-readiness") == ["true"]
    assert "summary_latencies=true" in flag_values(args, "--metrics-config")
    assert embedded["ADMIN_KEY_ENV"] == "CXR_ADMIN_KEY"
    for flag, project in (
        ("--grpc-restricted-protocol", embedded["RESTRICTED_PROTOCOLS"]),
        ("--http-restricted-api", embedded["RESTRICTED_PROTOCOLS"]),
    ):
        (value,) = flag_values(args, flag)
        protocols, header = value.split(":", 1)
        assert set(protocols.split(",")) == ADMIN_PROTOCOLS == set(project.split(","))
        assert header == f"{constants(CONTRACT)['ADMIN_HEADER']}={TEST_KEY}"
    assert triton.get("shm_size"), "the Python backend needs a larger /dev/shm"
    health = " ".join(triton["healthcheck"]["test"])
    assert "curl" in health and f"localhost:{HTTP_PORT}/v2/health/ready" in health


def test_ports_match_the_project_and_admin_endpoints_stay_on_the_host(
    compose: dict[str, Any],
) -> None:
    defaults = constants(SERVER_TRITON, scope="ServerConfig")  # the embedded server's ports
    embedded = (defaults["http_port"], defaults["grpc_port"], defaults["metrics_port"])
    assert embedded == (HTTP_PORT, GRPC_PORT, METRICS_PORT)
    services = compose["services"]
    args = command_of(services["triton"])
    for flag, port in (
        ("--http-port", HTTP_PORT),
        ("--grpc-port", GRPC_PORT),
        ("--metrics-port", METRICS_PORT),
    ):
        assert flag_values(args, flag) in ([], [str(port)]), flag
    triton_ports = {
        target: (ip, pub) for ip, pub, target in map(parse_port, services["triton"]["ports"])
    }
    assert triton_ports[HTTP_PORT][1] == HTTP_PORT
    assert triton_ports[GRPC_PORT][1] == GRPC_PORT
    assert triton_ports[METRICS_PORT] == ("127.0.0.1", METRICS_PORT), "metrics: this host only"
    assert set(triton_ports) == {HTTP_PORT, GRPC_PORT, METRICS_PORT}

    published: set[int] = set()
    for name, service in services.items():
        for ip, pub, target in map(parse_port, service.get("ports", [])):
            assert pub is not None, f"{name}: publish {target} on a fixed host port"
            published.add(pub)
            public = name == "triton" and target in (HTTP_PORT, GRPC_PORT)
            if not public:
                assert ip == "127.0.0.1", (
                    f"{name}:{target} must bind 127.0.0.1, not {ip or '0.0.0.0'}"
                )
    assert "ports" not in services["locust-worker"], "workers scale; they publish nothing"
    assert "container_name" not in services["locust-worker"]

    # Every hard-coded `localhost:<port>` the client and load test use is a port published here.
    local = re.compile(r"(?:localhost|127\.0\.0\.1):(\d+)")
    used = {
        int(port)
        for package in ("client", "loadtest", "cxr")
        for source in (ROOT / package).rglob("*.py")
        for port in local.findall(source.read_text(encoding="utf-8"))
    }
    assert used <= published, f"the project uses ports {used - published} that are not published"


def test_locust_master_and_workers_target_triton_grpc(compose: dict[str, Any]) -> None:
    services = compose["services"]
    master, worker = services["locust"], services["locust-worker"]
    assert master["image"] == worker["image"] and master.get("build") == worker.get("build")
    margs, wargs = command_of(master), command_of(worker)
    assert "--master" in margs and "--worker" in wargs
    assert flag_values(margs, "--host") == [f"triton:{GRPC_PORT}"]
    assert flag_values(wargs, "--master-host") == ["locust"]
    assert any(t == 8089 for _ip, _pub, t in map(parse_port, master["ports"]))
    # /app in the load-test image is the repository root (COPY . /app).
    for args in (margs, wargs):
        (locustfile,) = flag_values(args, "-f")
        assert locustfile.startswith("/app/")
        assert (ROOT / locustfile.removeprefix("/app/")).is_file(), f"{locustfile} not in the repo"


def test_prometheus_scrapes_triton_metrics_every_5s(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {
        target: job.get("scrape_interval", config.get("global", {}).get("scrape_interval"))
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    }
    assert targets.get(f"triton:{METRICS_PORT}") == "5s"
    mounts = {target: source for source, target, _ in binds(compose["services"]["prometheus"])}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./docker/prometheus.yml"
    command = command_of(compose["services"]["prometheus"])
    assert flag_values(command, "--config.file") in ([], ["/etc/prometheus/prometheus.yml"])


def test_grafana_provisions_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    mounts = {source: target for source, target, _ in binds(compose["services"]["grafana"])}
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text(encoding="utf-8")
    )["providers"]
    assert {p["options"]["path"] for p in providers} == {mounts["./docker/grafana/dashboards"]}

    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    exprs = []
    for panel in dashboard["panels"]:
        assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"
        assert panel["datasource"]["uid"] == prometheus["uid"]
        for target in panel["targets"]:
            assert re.search(r"\bnv_inference_\w+", target["expr"]), (panel["title"], target)
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            exprs.append(target["expr"])
    joined = "\n".join(exprs)
    for metric in (
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_request_failure",
    ):
        assert re.search(rf"rate\({metric}\b", joined), f"no rate() of {metric}"
    assert re.search(r'nv_inference_request_summary_us\{[^}]*quantile="0\.99"', joined), "p99 panel"
