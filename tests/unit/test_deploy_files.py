"""deploy/: the files parse, the commands they run exist in our package and CLI, ports match the defaults."""

from __future__ import annotations

import importlib
import logging
import os
import logging.config
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eldric import cli
from eldric.cluster.queues import WORKER_PORTS, WORKER_TYPES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTROLLER_PORT, FLOWER_PORT, REGISTRY_PORT, REDIS_PORT = 8880, 5555, 8892, 6379
DATA_AGENT_PORT = 8992  # a data node runs the registry on 8892, so its agent moves (as in the Procfile)


# --- helpers ------------------------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys accumulate (configparser would keep only the last)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}: not a key=value line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def eldric_args(argv: list[str]):
    """Parse an `eldric ...` command line with our own CLI; fails the test if it would not start."""
    assert Path(argv[0]).name == "eldric", argv
    return cli.build_parser().parse_args(argv[1:])


ENTRY = {"beat": "eldric.cli._beat", "flower": "eldric.cli._flower", "registry": "registry.cli.run",
         "controller": "controller.cli.run", "worker": "worker_agent.cli.run"}


def entry(args) -> str:
    """Which function an `eldric ...` command line would run."""
    return f"{args.func.__module__}.{args.func.__name__}"


def flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def check_gunicorn(argv: list[str], config_root: Path) -> None:
    """`gunicorn --config X controller:create_app()`: the config exists, the factory imports."""
    assert Path(argv[0]).name == "gunicorn"
    config = Path(flag(argv, "--config") or flag(argv, "-c"))
    assert (config_root / config.name).is_file(), config
    app_spec = argv[-1]
    module, _, call = app_spec.partition(":")
    assert call.endswith("()"), app_spec
    assert callable(getattr(importlib.import_module(module), call[:-2]))


def documented_env_vars() -> set[str]:
    """Every ELDRIC_* name our Python code mentions (settings tables, entry points)."""
    names: set[str] = set()
    for package in ("eldric", "controller", "worker_agent", "registry"):
        for source in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"ELDRIC_[A-Z0-9_]+", source.read_text()))
    # Settings fields whose variable is the prefix plus the field name, not spelled out.
    for settings in all_settings_classes():
        names |= {variable for variable, _default, _meaning in settings.table()}
    return names


def all_settings_classes() -> list[type]:
    from controller.config import ControllerSettings
    from eldric.cluster.schedules import ScheduleSettings
    from registry.server import RegistrySettings
    from worker_agent.settings import AgentSettings
    return [ControllerSettings, AgentSettings, RegistrySettings, ScheduleSettings, cli.FlowerSettings]


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


# --- systemd ------------------------------------------------------------------------------------

UNITS = {
    "eldric-controller.service": "controller",
    "eldric-worker@.service": "worker",
    "eldric-beat.service": "beat",
    "eldric-flower.service": "flower",
    "eldric-registry.service": "registry",
}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_units_parse_and_run_our_commands(unit):
    sections = parse_unit(DEPLOY / "systemd" / unit)
    assert {"Unit", "Service", "Install"} <= set(sections)
    [exec_start] = sections["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].startswith("/opt/eldric/venv/bin/")
    assert sections["Service"]["Restart"] == ["on-failure"]
    assert "/etc/eldric/eldric.env" in sections["Service"]["EnvironmentFile"]
    role = UNITS[unit]
    if role == "controller":
        check_gunicorn(argv, DEPLOY)
        assert sections["Service"]["Environment"] == [f"ELDRIC_CONTROLLER_PORT={CONTROLLER_PORT}"]
        return
    if role == "worker":
        for wtype in WORKER_TYPES:
            args = eldric_args([a.replace("%i", wtype).replace("${ELDRIC_WORKER_NAME}", "node-1") for a in argv])
            assert (args.type, args.name) == (wtype, "node-1")
        assert "/etc/eldric/worker-%i.env" in sections["Service"]["EnvironmentFile"]
        return
    args = eldric_args(argv)
    assert entry(args) == ENTRY[role]
    if role == "flower":
        assert args.port == FLOWER_PORT == cli.FlowerSettings.from_env({}).flower_port
    if role == "registry":
        from registry.server import RegistrySettings
        assert args.port == REGISTRY_PORT == RegistrySettings.from_env({}).port


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_analyze_verifies_the_units(unit, tmp_path):
    """As installed: /opt/eldric/venv is this interpreter's environment, /opt/eldric/deploy is deploy/."""
    text = (DEPLOY / "systemd" / unit).read_text()
    # Each command where this environment has it (a venv with system site-packages keeps some outside).
    for command in set(re.findall(r"/opt/eldric/venv/bin/([\w.-]+)", text)):
        found = shutil.which(command, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        text = text.replace(f"/opt/eldric/venv/bin/{command}", found or f"{Path(sys.executable).parent}/{command}")
    text = text.replace("/opt/eldric/deploy/", f"{DEPLOY}/")
    target = tmp_path / unit.replace("@.", "@inference.")
    target.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(target)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if target.name in line]
    assert not problems, result.stdout + result.stderr


# --- gunicorn -------------------------------------------------------------------------------------

def test_gunicorn_config_binds_the_documented_port_and_its_logging_config_loads(monkeypatch):
    for var in ("ELDRIC_CONTROLLER_HOST", "ELDRIC_CONTROLLER_PORT", "ELDRIC_LOG_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert conf["bind"] == f"127.0.0.1:{CONTROLLER_PORT}"
    from eldric.web.gunicorn_server import GuardedThreadWorker  # gthread, guarded against slow clients
    assert issubclass(conf["worker_class"], GuardedThreadWorker) and conf["threads"] > 1
    monkeypatch.setenv("ELDRIC_LOG_FORMAT", "json")
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(conf["logconfig_dict"])
        from eldric.logging_setup import JsonFormatter
        assert isinstance(logging.getLogger("gunicorn.error").handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers, root.level = saved
        logging.getLogger("gunicorn.error").handlers = []
        logging.getLogger("gunicorn.access").handlers = []


# --- docker -------------------------------------------------------------------------------------

def test_dockerfile_copies_every_package_and_the_deploy_files():
    text = (DEPLOY / "Dockerfile").read_text()
    for package in ("eldric", "controller", "worker_agent", "registry", "deploy"):
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), package
    assert "pip install" in text and "USER eldric" in text


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_every_role_with_commands_our_cli_accepts(compose):
    services = compose["services"]
    assert {"redis", "controller", "beat", "flower", "registry", "worker-inference", "worker-data"} <= set(services)
    check_gunicorn(services["controller"]["command"], DEPLOY)
    assert entry(eldric_args(services["beat"]["command"])) == ENTRY["beat"]
    assert eldric_args(services["flower"]["command"]).port == FLOWER_PORT
    assert eldric_args(services["registry"]["command"]).port == REGISTRY_PORT
    assert services["controller"]["ports"] == [f"{CONTROLLER_PORT}:{CONTROLLER_PORT}"]
    assert services["flower"]["ports"] == [f"{FLOWER_PORT}:{FLOWER_PORT}"]
    assert services["controller"]["environment"]["ELDRIC_CONTROLLER_PORT"] == str(CONTROLLER_PORT)
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"]


@pytest.mark.parametrize("service, wtype, port", [("worker-inference", "inference", WORKER_PORTS["inference"]),
                                                  ("worker-data", "data", DATA_AGENT_PORT)])
def test_compose_workers_listen_and_advertise_their_port(compose, service, wtype, port):
    spec = compose["services"][service]
    args = eldric_args(spec["command"])
    assert (args.type, args.port, args.host) == (wtype, port, "0.0.0.0")
    assert spec["environment"]["ELDRIC_AGENT_ADVERTISE_URL"] == f"http://{service}:{port}"


def test_compose_points_everything_at_its_redis(compose):
    for name, spec in compose["services"].items():
        if name != "redis":
            assert spec["environment"]["ELDRIC_REDIS_URL"] == f"redis://redis:{REDIS_PORT}/0", name
            assert spec["depends_on"]["redis"]["condition"] == "service_healthy"


# --- Kubernetes ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    docs = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / resource).read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def container(workload: dict) -> dict:
    [c] = workload["spec"]["template"]["spec"]["containers"]
    return c


def test_kubernetes_has_every_piece(k8s):
    assert {("Deployment", "eldric-controller"), ("Service", "eldric-controller"),
            ("DaemonSet", "eldric-worker-inference"), ("StatefulSet", "redis"), ("Service", "redis"),
            ("Deployment", "eldric-beat"), ("Deployment", "eldric-flower"), ("Service", "eldric-flower"),
            ("ConfigMap", "eldric-config"), ("Secret", "eldric-secrets")} <= set(k8s)


def test_kubernetes_services_select_a_workload_and_name_its_port(k8s):
    workloads = [d for (kind, _), d in k8s.items() if kind in ("Deployment", "DaemonSet", "StatefulSet")]
    for (kind, name), svc in k8s.items():
        if kind != "Service":
            continue
        selector = svc["spec"]["selector"]
        [target] = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        ports = {p["name"]: p["containerPort"] for p in container(target)["ports"]}
        for port in svc["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], name


def test_kubernetes_commands_and_ports(k8s):
    controller = container(k8s[("Deployment", "eldric-controller")])
    check_gunicorn(controller["command"], DEPLOY)
    env = {e["name"]: e.get("value") for e in controller["env"]}
    assert int(env["ELDRIC_CONTROLLER_PORT"]) == controller["ports"][0]["containerPort"] == CONTROLLER_PORT

    worker = k8s[("DaemonSet", "eldric-worker-inference")]
    assert worker["spec"]["template"]["spec"]["nodeSelector"] == {"eldric.ai/worker-type": "inference"}
    agent = container(worker)
    args = eldric_args([a.replace("$(NODE_NAME)", "gpu-node-1") for a in agent["command"]])
    assert (args.type, args.name, args.port) == ("inference", "gpu-node-1", WORKER_PORTS["inference"])
    assert agent["ports"][0]["containerPort"] == WORKER_PORTS["inference"]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["ELDRIC_AGENT_ADVERTISE_URL"] == f"http://$(POD_IP):{WORKER_PORTS['inference']}"

    assert entry(eldric_args(container(k8s[("Deployment", "eldric-beat")])["command"])) == ENTRY["beat"]
    flower = container(k8s[("Deployment", "eldric-flower")])
    assert eldric_args(flower["command"]).port == flower["ports"][0]["containerPort"] == FLOWER_PORT
    assert container(k8s[("StatefulSet", "redis")])["ports"][0]["containerPort"] == REDIS_PORT
    assert k8s[("ConfigMap", "eldric-config")]["data"]["ELDRIC_REDIS_URL"] == f"redis://redis:{REDIS_PORT}/0"


def test_kubernetes_probes_hit_endpoints_that_exist(k8s):
    from controller import create_app
    from worker_agent.server import create_agent_app
    controller_paths = {r.rule for r in create_app({"REDIS_URL": "redis://127.0.0.1:1/0"}).url_map.iter_rules()}
    agent_paths = {r.rule for r in create_agent_app(None).url_map.iter_rules()}  # type: ignore[arg-type]
    expected = {"eldric-controller": controller_paths, "eldric-worker-inference": agent_paths,
                "eldric-flower": {"/healthcheck"}}
    for name, paths in expected.items():
        workload = k8s.get(("Deployment", name)) or k8s[("DaemonSet", name)]
        c = container(workload)
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["path"] in paths, (name, probe)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed")
def test_kustomize_builds_the_manifests():
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "kubernetes")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "kind: DaemonSet" in result.stdout


# --- example configuration ----------------------------------------------------------------------

def test_every_worker_type_has_an_example_env_with_its_port():
    for wtype in WORKER_TYPES:
        env = read_env_file(DEPLOY / "env" / f"{wtype}.env")
        port = DATA_AGENT_PORT if wtype == "data" else WORKER_PORTS[wtype]
        assert env["ELDRIC_WORKER_TYPE"] == wtype
        assert int(env["ELDRIC_AGENT_PORT"]) == port
        assert env["ELDRIC_AGENT_ADVERTISE_URL"].endswith(f":{port}")
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", env["ELDRIC_WORKER_NAME"])


def test_deploy_files_only_set_variables_our_code_reads():
    known = documented_env_vars()
    files = [*(DEPLOY / "env").glob("*.env"), DEPLOY / "local.env", DEPLOY / "docker-compose.yml",
             *(DEPLOY / "kubernetes").glob("*.yaml"), *(DEPLOY / "systemd").glob("*.service")]
    for path in files:
        used = set(re.findall(r"\b(ELDRIC_[A-Z0-9_]+)", path.read_text()))
        assert used <= known, (path.name, sorted(used - known))


def test_procfile_runs_beat_and_flower():
    procs = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line)
    assert entry(eldric_args(shlex.split(procs["beat"]))) == ENTRY["beat"]
    assert eldric_args(shlex.split(procs["flower"])).port == FLOWER_PORT
