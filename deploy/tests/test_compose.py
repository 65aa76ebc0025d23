"""deploy/compose.yaml and deploy/Dockerfile, checked for structure (no
Docker engine runs here): the right pieces, wired to each other, and the
environment of every dealmesh container made only of keys its binary reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

import envkeys
from conftest import CHART, load_values

DEPLOY = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
DATABASE_SERVICES = ("ingest", "scoring", "crm", "notify")


def stages() -> dict[str, list[str]]:
    """Dockerfile stages by name, each as its instruction lines."""
    out: dict[str, list[str]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or m.group(1)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def dealmesh_containers() -> dict[str, str]:
    """Compose service name -> the dealmesh binary it runs (by build target)."""
    return {name: svc["build"]["target"] for name, svc in SERVICES.items() if "build" in svc}


# --- compose ---------------------------------------------------------------------


def test_the_stack_has_kafka_kraft_postgres_tracing_and_the_five_services():
    assert set(envkeys.SERVICES) <= set(SERVICES)
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not [n for n in SERVICES if "zookeeper" in n]
    # A KRaft cluster id is 16 bytes, URL-safe base64 without padding.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["environment"]["CLUSTER_ID"])
    # Data survives a restart: the log directory is the mounted volume.
    assert f"kafka-data:{kafka['environment']['KAFKA_LOG_DIRS']}" in kafka["volumes"]
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    assert SERVICES["otel-collector"]["image"].startswith("otel/opentelemetry-collector")
    assert SERVICES["jaeger"]["image"].startswith("jaegertracing/")
    assert "16686:16686" in SERVICES["jaeger"]["ports"]


@pytest.mark.parametrize("name", envkeys.SERVICES)
def test_each_service_is_built_from_the_dockerfile_target_of_its_binary(name):
    build = SERVICES[name]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert build["target"] == name
    assert name in stages()
    assert SERVICES[name]["command"] == ["serve"]


def test_one_shots_provision_topics_and_migrate_each_database_first():
    containers = dealmesh_containers()
    assert SERVICES["topics"]["command"] == ["topics"] and containers["topics"] == "ingest"
    for svc in DATABASE_SERVICES:
        one_shot = SERVICES[f"migrate-{svc}"]
        assert one_shot["command"] == ["migrate"] and containers[f"migrate-{svc}"] == svc
        assert one_shot["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert SERVICES[svc]["depends_on"][f"migrate-{svc}"]["condition"] == "service_completed_successfully"
    for svc in envkeys.SERVICES:
        deps = SERVICES[svc]["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["topics"]["condition"] == "service_completed_successfully"
        assert SERVICES[svc]["environment"]["DEALMESH_PROVISION_TOPICS"] == "false"


@pytest.mark.parametrize("name", sorted(dealmesh_containers()))
def test_container_env_is_read_by_its_binary(name):
    svc = dealmesh_containers()[name]
    if not envkeys.has_binary(svc):
        pytest.skip(f"services/{svc} has no binary yet")
    read = envkeys.service_keys(svc)
    env = SERVICES[name]["environment"]
    unread = [k for k in env if not read.reads(k)]
    assert not unread, f"{name} sets variables dealmesh-{svc} does not read: {unread}"
    if svc in DATABASE_SERVICES:
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]


def test_services_listen_where_their_ports_are_published():
    for svc in envkeys.SERVICES:
        env = SERVICES[svc]["environment"]
        listen = {int(v.rsplit(":", 1)[1]) for k, v in env.items() if k.endswith("_ADDR")}
        published = {int(p.split(":")[1]) for p in SERVICES[svc].get("ports", [])}
        assert listen == published, svc


def test_each_service_has_its_own_database():
    urls = [SERVICES[s]["environment"]["DATABASE_URL"] for s in DATABASE_SERVICES]
    assert len(set(urls)) == len(urls)


def test_services_reach_kafka_and_the_collector_by_their_compose_names():
    kafka_env = SERVICES["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    for svc in envkeys.SERVICES:
        env = SERVICES[svc]["environment"]
        assert env["DEALMESH_KAFKA_BOOTSTRAP_SERVERS"] == advertised["PLAINTEXT"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{http.rsplit(':', 1)[1]}"
    mount = SERVICES["otel-collector"]["volumes"][0].split(":")
    assert (DEPLOY / mount[0]).resolve() == DEPLOY / "otel-collector.yaml"
    assert SERVICES["otel-collector"]["command"] == [f"--config={mount[1]}"]
    [exporter] = [e for e in collector["service"]["pipelines"]["traces"]["exporters"] if e.startswith("otlp")]
    assert collector["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert SERVICES["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


# --- Dockerfile ------------------------------------------------------------------


def test_dependencies_are_cooked_in_their_own_cached_layer():
    builder = stages()["builder"]
    cook = next(i for i, line in enumerate(builder) if "cargo chef cook" in line)
    copy_all = next(i for i, line in enumerate(builder) if line.startswith("COPY . ."))
    build = next(i for i, line in enumerate(builder) if "cargo build" in line)
    assert builder[cook - 1].startswith("COPY --from=planner") and "recipe.json" in builder[cook - 1]
    assert cook < copy_all < build
    assert "--locked" in builder[build] and "--release" in builder[build]
    for svc in envkeys.SERVICES:
        assert f"-p dealmesh-{svc}" in builder[build]


@pytest.mark.parametrize("svc", envkeys.SERVICES)
def test_runtime_images_are_shell_free_and_non_root(svc, ):
    all_stages = stages()
    runtime = all_stages["runtime"]
    assert re.match(r"FROM gcr\.io/distroless/cc-debian12:nonroot AS runtime", runtime[0])
    assert "USER 65532:65532" in runtime
    stage = all_stages[svc]
    assert stage[0] == f"FROM runtime AS {svc}"
    assert f"COPY --from=builder /out/dealmesh-{svc} /usr/local/bin/dealmesh-{svc}" in stage
    entry = next(line for line in stage if line.startswith("ENTRYPOINT"))
    # Exec form: there is no shell to run a shell-form command.
    assert json.loads(entry.split(" ", 1)[1]) == [f"/usr/local/bin/dealmesh-{svc}"]
    assert json.loads(next(line for line in stage if line.startswith("CMD")).split(" ", 1)[1]) == ["serve"]
    assert not any(line.startswith("USER") for line in stage), "the stage keeps the runtime's non-root user"
    # The chart's pods run as the same uid.
    assert load_values(CHART / "values.yaml")["podDefaults"]["securityContext"]["runAsUser"] == 65532
    exposed = {int(p) for line in stage if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert set(load_values(CHART / "values.yaml")[svc]["ports"].values()) == exposed


def test_scoring_image_carries_the_model_where_chart_and_compose_look():
    path = "/etc/dealmesh/scoring/thesis.toml"
    assert f"COPY services/scoring/thesis.toml {path}" in stages()["scoring"]
    assert (envkeys.REPO / "services" / "scoring" / "thesis.toml").exists()
    assert load_values(CHART / "values.yaml")["scoring"]["config"]["modelFile"] == path
    assert SERVICES["scoring"]["environment"]["DEALMESH_SCORING_MODEL_FILE"] == path


def test_build_context_leaves_out_build_output_and_git():
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {"target", ".git"} <= set(ignored)


def test_builder_uses_the_workspace_toolchain_and_builds_every_binary():
    import tomllib

    workspace = tomllib.loads((envkeys.REPO / "Cargo.toml").read_text())
    rust = re.search(r"^ARG RUST_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    assert rust == workspace["workspace"]["package"]["rust-version"]
    for svc in envkeys.SERVICES:
        assert envkeys.has_binary(svc), f"services/{svc} builds no dealmesh-{svc} binary"
