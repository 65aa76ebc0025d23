"""The environment the chart sets is exactly what the services read.

The keys a service reads are extracted from its Rust sources at test time
(envkeys.py). The chart is rendered with every setting it offers turned on;
then every variable it sets must be one the service reads, and every key
the service reads must be settable, except the few listed below with why.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

import envkeys
from conftest import CHART, component, pod_spec, render

# Keys the services read that the chart deliberately never sets.
NOT_SET_BY_CHART = {
    "DEALMESH_CONFIG_FILE": "the chart configures through the environment only; no KEY=VALUE file is mounted",
}


def everything_on() -> dict:
    """Values that turn on every setting the chart offers."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values: dict = {
        "kafka": {
            "config": {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512"},
            "sasl": {"existingSecret": "kafka-credentials"},
            "tls": {"existingSecret": "kafka-tls", "certKey": "tls.crt", "keyKey": "tls.key"},
        },
        "auth": {"jwksUrl": "https://idp.example.com/jwks", "issuer": "https://idp.example.com/",
                 "audience": "dealmesh", "hs256": {"existingSecret": "jwt"}},
        "telemetry": {"otlpEndpoint": "http://collector:4318"},
        "ingest": {"webhookSources": [{"name": "partner-x", "existingSecret": "hooks", "key": "partner-x"}]},
    }
    for svc in envkeys.SERVICES:
        props = schema["properties"][svc]["properties"]
        values.setdefault(svc, {})["config"] = {k: "1" for k in props["config"]["properties"]}
        values[svc]["secrets"] = {k: {"existingSecret": f"{svc}-secrets", "key": k}
                                  for k in props["secrets"]["properties"]}
    return values


def chart_env(manifests, svc: str) -> dict[str, str]:
    """Every env name set on the service's containers (serve and its hook
    Jobs), with where it was seen."""
    names: dict[str, str] = {}
    for m in manifests:
        spec = pod_spec(m.doc)
        if spec is None or component(m.doc) != svc:
            continue
        for c in spec["containers"]:
            for e in c.get("env", []):
                names.setdefault(e["name"], repr(m))
    return names


@pytest.fixture(scope="module")
def full_render():
    return render(everything_on())


@pytest.mark.parametrize("svc", envkeys.SERVICES)
def test_chart_env_is_exactly_what_the_service_reads(svc, full_render):
    if not envkeys.has_binary(svc):
        pytest.skip(f"services/{svc} has no dealmesh-{svc} binary yet")
    read = envkeys.service_keys(svc)
    rendered = chart_env(full_render, svc)
    assert rendered, f"nothing rendered for {svc}"

    unread = {name: where for name, where in rendered.items() if not read.reads(name)}
    assert not unread, f"the chart sets variables dealmesh-{svc} does not read: {unread}"

    unset = set(read.exact) - set(rendered) - set(NOT_SET_BY_CHART)
    assert not unset, (
        f"dealmesh-{svc} reads keys the chart cannot set: "
        + ", ".join(f"{k} ({read.exact[k]})" for k in sorted(unset))
    )
    for prefix in read.prefixes:
        assert any(name.startswith(prefix) for name in rendered), f"no {prefix}* variable can be set for {svc}"


def test_extraction_finds_the_documented_keys():
    """The extractor is what the drift test stands on: it must find keys the
    README documents, their prefix families, and nothing from tests."""
    keys = envkeys.service_keys("ingest")
    for documented in ("DEALMESH_INGEST_GRPC_ADDR", "DATABASE_URL", "DEALMESH_KAFKA_BOOTSTRAP_SERVERS",
                       "DEALMESH_LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT", "DEALMESH_SHUTDOWN_GRACE"):
        assert documented in keys.exact
    assert set(keys.prefixes) == {"KAFKA_", "DEALMESH_WEBHOOK_SECRET_"}
    assert keys.family_of("KAFKA_SASL_PASSWORD") == "KAFKA_"
    assert not keys.reads("KAFKA_")
    # Used only inside #[cfg(test)] in crates/eventlog.
    assert "KAFKA_SECURITY_PROTOCOL" not in keys.exact


def test_stripping_test_modules_keeps_code_after_them():
    text = '''
pub const A: &str = "DEALMESH_A";
#[cfg(test)]
mod tests {
    const T: &str = "DEALMESH_ONLY_IN_TESTS";
    fn f() { let s = "}"; }
}
pub const B: &str = "DEALMESH_B";
'''
    stripped = envkeys._strip_comments_and_tests(text)
    assert "DEALMESH_A" in stripped and "DEALMESH_B" in stripped
    assert "DEALMESH_ONLY_IN_TESTS" not in stripped


def test_keys_the_chart_leaves_unset_are_real_keys():
    everywhere = set()
    for svc in envkeys.SERVICES:
        everywhere |= set(envkeys.service_keys(svc).exact)
    assert set(NOT_SET_BY_CHART) <= everywhere


def test_shared_module_keys_count_only_for_services_using_the_module(tmp_path):
    crate = tmp_path / "runtime"
    (crate / "src").mkdir(parents=True)
    module = crate / "src" / "database.rs"
    module.write_text('pub const URL: &str = "DATABASE_URL";\npub struct DatabaseSettings;\n')
    root = crate / "src" / "lib.rs"
    root.write_text("pub mod database;\n")
    assert envkeys._uses_module("use dealmesh_runtime::database::connect;", crate, module)
    assert envkeys._uses_module("use dealmesh_runtime::{config, database};", crate, module)
    assert envkeys._uses_module("let db = DatabaseSettings::from_source(&s)?;", crate, module)
    assert not envkeys._uses_module("use dealmesh_runtime::config::Reader;", crate, module)
    assert envkeys._uses_module("use dealmesh_runtime::config::Reader;", crate, root)
    # A module the service reaches through another module of the crate.
    assert envkeys._uses_module("use crate::database::DatabaseSettings;", crate, module, inside=True)
    assert not envkeys._uses_module("use crate::config::Reader;", crate, module, inside=True)


@pytest.mark.parametrize("svc", ["enrich", "scoring", "crm", "notify"])
def test_keda_watches_the_group_the_consumer_really_joins(svc):
    """KEDA scales on `<service>.consumerGroup`: the chart passes it to a
    service that reads its group from the environment; a service with a
    fixed group must have exactly that one in its sources."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    group = defaults[svc]["consumerGroup"]
    read = envkeys.service_keys(svc)
    group_keys = [k for k in read.exact if re.search(r"_(GROUP_ID|CONSUMER_GROUP)$", k)]
    if group_keys:
        [key] = group_keys
        env = chart_env_values(render(), svc)
        assert env[key] == group
    else:
        sources = "\n".join(p.read_text() for p in (envkeys.REPO / "services" / svc / "src").rglob("*.rs"))
        assert re.search(rf'"group\.id",\s*"{re.escape(group)}"', sources), f"{svc} does not join {group}"


def chart_env_values(manifests, svc: str) -> dict[str, str]:
    for m in manifests:
        if m.kind == "Deployment" and component(m.doc) == svc:
            return {e["name"]: e.get("value") for e in m.doc["spec"]["template"]["spec"]["containers"][0]["env"]}
    raise AssertionError(f"no Deployment for {svc}")
