"""The helm chart: lint, render, Kubernetes schemas, and what a platform
team checks before adopting it (security, probes, drain, hooks, scaling,
network paths, bad values)."""

from __future__ import annotations

import json
import re

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError

import chart_schema
import envkeys
from conftest import (
    CHART,
    EXAMPLES,
    RELEASE,
    Manifest,
    component,
    deep_merge,
    load_values,
    notes,
    pod_spec,
    render,
    render_raw,
    value_sets,
)
from crd_schemas import SCHEMAS as CRD_SCHEMAS

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# newest whose schemas kubernetes-validate bundles.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
SERVICES = envkeys.SERVICES
DATABASE_SERVICES = ("ingest", "scoring", "crm", "notify")
CHART_DEFAULTS = load_values(CHART / "values.yaml")
SECRET_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|USER_KEY)$|^DATABASE_URL$")


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.kind == kind]


def one(manifests: list[Manifest], kind: str, svc: str) -> Manifest:
    found = [m for m in manifests if m.kind == kind and component(m.doc) == svc
             and "helm.sh/hook" not in m.annotations]
    assert len(found) == 1, f"{kind} of {svc}: {found}"
    return found[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --- lint, render, schemas ---------------------------------------------------


@pytest.mark.parametrize("kube_version", ["v1.29.0", "v" + KUBE_VERSIONS[-1]])
@pytest.mark.parametrize("values", value_sets(), ids=lambda v: v[0])
def test_lint_is_clean(values, kube_version):
    name, vals = values
    report = helm.lint(str(CHART), vals, strict=True, namespace="deals", kube_version=kube_version)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_every_example_is_rendered():
    assert {p.name for p in EXAMPLES} == {"managed-kafka-sasl.yaml", "small-single-namespace.yaml"}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(rendered, kube_version):
    _, manifests = rendered
    builtin = 0
    for m in manifests:
        key = (m.doc["apiVersion"], m.kind)
        if key in CRD_SCHEMAS:
            # Not a built-in kind: kubernetes-validate has no schema for it...
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(m.doc, kube_version, strict=True)
            # ...so it is checked against the upstream CRD's fields instead.
            jsonschema.validate(m.doc, CRD_SCHEMAS[key])
        else:
            kubernetes_validate.validate(m.doc, kube_version, strict=True)
            builtin += 1
    assert builtin > 0


def test_custom_resources_are_validated_too():
    values = load_values(CHART / "examples" / "managed-kafka-sasl.yaml")
    values = deep_merge(values, {"webhookRoute": {"enabled": True, "parentRefs": [{"name": "public"}],
                                                  "hostnames": ["hooks.example.com"]}})
    manifests = render(values)
    kinds = {m.kind for m in manifests}
    assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "HTTPRoute"} <= kinds
    for m in manifests:
        key = (m.doc["apiVersion"], m.kind)
        if key in CRD_SCHEMAS:
            jsonschema.validate(m.doc, CRD_SCHEMAS[key])
    bad = next(m for m in manifests if m.kind == "ScaledObject").doc
    bad = json.loads(json.dumps(bad))
    bad["spec"]["maxReplicas"] = 3  # the real field is maxReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])


def test_committed_schema_is_the_generated_one():
    # The README's settings tables come from the same command; their rows
    # are checked below, their wording (the constants' doc comments) is not,
    # so rewording a doc comment does not fail the build.
    hint = "stale: run python deploy/tests/chart_schema.py --write"
    assert json.loads((CHART / "values.schema.json").read_text()) == json.loads(chart_schema.schema_text()), hint


# --- what runs ---------------------------------------------------------------


def test_one_deployment_service_and_account_per_service(rendered):
    _, manifests = rendered
    for svc in SERVICES:
        deployment = one(manifests, "Deployment", svc)
        service = one(manifests, "Service", svc)
        account = one(manifests, "ServiceAccount", svc)
        spec = deployment.doc["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == account.name
        assert spec["automountServiceAccountToken"] is False
        [container] = spec["containers"]
        assert container["image"].endswith(f"/dealmesh-{svc}:0.1.0")
        assert container["args"] == ["serve"]
        assert service.doc["spec"]["selector"] == deployment.doc["spec"]["selector"]["matchLabels"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert {p["name"]: p["port"] for p in service.doc["spec"]["ports"]} == ports


def test_a_service_can_be_disabled_and_sized_on_its_own():
    manifests = render({"enrich": {"enabled": False},
                        "crm": {"replicaCount": 5, "resources": {"limits": {"cpu": "3", "memory": "2Gi"}}}})
    assert not [m for m in manifests if component(m.doc) == "enrich"]
    crm = one(manifests, "Deployment", "crm").doc
    assert crm["spec"]["replicas"] == 5
    assert crm["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "3", "memory": "2Gi"}
    assert one(manifests, "Deployment", "ingest").doc["spec"]["replicas"] == 2


def test_pods_are_locked_down(rendered):
    _, manifests = rendered
    pods = [(m, pod_spec(m.doc)) for m in manifests if pod_spec(m.doc) is not None]
    assert len(pods) >= 2 * len(SERVICES)  # deployments, hook jobs, test pods
    for m, spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True, m
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", m
        assert spec["automountServiceAccountToken"] is False, m
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, m
            assert sc["allowPrivilegeEscalation"] is False, m
            assert sc["capabilities"]["drop"] == ["ALL"], m
            assert "add" not in sc["capabilities"], m
            assert sc["runAsNonRoot"] is True, m
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", m
            assert c["resources"]["requests"] and c["resources"]["limits"], m
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), m


def test_probes_hit_the_health_endpoints_on_the_admin_port(rendered):
    _, manifests = rendered
    for svc in SERVICES:
        [c] = one(manifests, "Deployment", svc).doc["spec"]["template"]["spec"]["containers"]
        admin = next(p for p in c["ports"] if p["name"] == "admin")
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        addr_env = [e for e in c["env"] if e["name"].endswith("_ADMIN_ADDR")]
        assert [e["value"] for e in addr_env] == [f"0.0.0.0:{admin['containerPort']}"]


@pytest.mark.parametrize("grace", [25, 40])
def test_termination_grace_covers_the_drain_time(grace):
    manifests = render({"shutdownGraceSeconds": grace})
    for svc in SERVICES:
        spec = one(manifests, "Deployment", svc).doc["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] == grace + 5
        assert env_of(spec["containers"][0])["DEALMESH_SHUTDOWN_GRACE"]["value"] == f"{grace}s"


def test_spread_over_zones_and_nodes_with_the_pods_own_labels(rendered):
    _, manifests = rendered
    for svc in SERVICES:
        template = one(manifests, "Deployment", svc).doc["spec"]["template"]
        constraints = template["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for c in constraints:
            assert c["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


# --- secrets -----------------------------------------------------------------


def test_no_secret_is_rendered_and_secret_settings_are_references():
    values = load_values(CHART / "examples" / "managed-kafka-sasl.yaml")
    manifests = render(values)
    assert not by_kind(manifests, "Secret")
    secret_envs = 0
    for m in manifests:
        spec = pod_spec(m.doc)
        for c in (spec or {}).get("containers", []):
            for e in c.get("env", []):
                if SECRET_ENV.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (m, e)
                    secret_envs += 1
    assert secret_envs > 10
    ingest = env_of(one(manifests, "Deployment", "ingest").doc["spec"]["template"]["spec"]["containers"][0])
    assert ingest["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "dealmesh-kafka", "key": "password"}
    assert ingest["DEALMESH_WEBHOOK_SECRET_PARTNER_X"]["valueFrom"]["secretKeyRef"] == {
        "name": "dealmesh-webhooks", "key": "partner-x"}
    assert ingest["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert ingest["KAFKA_SASL_MECHANISMS"]["value"] == "SCRAM-SHA-512"


def test_kafka_tls_files_are_mounted_where_librdkafka_looks():
    manifests = render({"kafka": {"tls": {"existingSecret": "kafka-ca", "certKey": "tls.crt", "keyKey": "tls.key",
                                          "keyPasswordKey": "tls.pass"}}})
    spec = one(manifests, "Deployment", "enrich").doc["spec"]["template"]["spec"]
    c = spec["containers"][0]
    mount = next(v for v in c["volumeMounts"] if v["name"] == "kafka-tls")
    assert mount["readOnly"] is True
    assert next(v for v in spec["volumes"] if v["name"] == "kafka-tls")["secret"]["secretName"] == "kafka-ca"
    env = env_of(c)
    assert env["KAFKA_SSL_CA_LOCATION"]["value"] == f"{mount['mountPath']}/ca.crt"
    assert env["KAFKA_SSL_KEY_LOCATION"]["value"] == f"{mount['mountPath']}/tls.key"
    assert env["KAFKA_SSL_KEY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-ca", "key": "tls.pass"}


# --- hooks -------------------------------------------------------------------


def test_migrations_and_topics_run_as_repeatable_hooks():
    manifests = render()
    jobs = by_kind(manifests, "Job")
    tasks = sorted((component(j.doc), j.doc["spec"]["template"]["spec"]["containers"][0]["args"][0]) for j in jobs)
    assert tasks == sorted([(s, "migrate") for s in DATABASE_SERVICES] + [("ingest", "topics")])
    for j in jobs:
        assert j.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "before-hook-creation" in j.annotations["helm.sh/hook-delete-policy"]
        assert j.doc["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    weight = {t: int(j.annotations["helm.sh/hook-weight"]) for j in jobs
              for t in [j.doc["spec"]["template"]["spec"]["containers"][0]["args"][0]]}
    account = next(m for m in manifests if m.kind == "ServiceAccount" and "helm.sh/hook" in m.annotations)
    assert int(account.annotations["helm.sh/hook-weight"]) < weight["migrate"]
    # Topics come from the hook, so ingest does not create them itself.
    ingest = env_of(one(manifests, "Deployment", "ingest").doc["spec"]["template"]["spec"]["containers"][0])
    assert ingest["DEALMESH_PROVISION_TOPICS"]["value"] == "false"


def test_hooks_can_be_turned_off():
    manifests = render({"hooks": {"migrations": {"enabled": False}, "topics": {"enabled": False}}})
    assert not by_kind(manifests, "Job")
    ingest = env_of(one(manifests, "Deployment", "ingest").doc["spec"]["template"]["spec"]["containers"][0])
    assert ingest["DEALMESH_PROVISION_TOPICS"]["value"] == "true"


def test_helm_test_checks_every_service_health():
    manifests = render({"notify": {"enabled": False}})
    pods = [m for m in by_kind(manifests, "Pod") if m.annotations.get("helm.sh/hook") == "test"]
    assert len(pods) == len(SERVICES) - 1
    for svc in SERVICES:
        if svc == "notify":
            continue
        service = one(manifests, "Service", svc)
        admin = next(p["port"] for p in service.doc["spec"]["ports"] if p["name"] == "admin")
        urls = [a for p in pods for a in p.doc["spec"]["containers"][0]["args"] if a.startswith("http")]
        assert f"http://{service.name}:{admin}/healthz" in urls
        assert f"http://{service.name}:{admin}/readyz" in urls


# --- scaling -----------------------------------------------------------------


def test_keda_scales_consumers_on_their_group_lag_and_ingest_on_cpu():
    values = load_values(CHART / "examples" / "managed-kafka-sasl.yaml")
    manifests = render(values)
    scaled = {component(m.doc): m.doc for m in by_kind(manifests, "ScaledObject")}
    assert set(scaled) == {"enrich", "crm"}  # the consumers with autoscaling on
    for svc, obj in scaled.items():
        deployment = one(manifests, "Deployment", svc).doc
        assert obj["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"]
        [trigger] = obj["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["topic"] == "prod.dealmesh.deals"
        assert trigger["metadata"]["consumerGroup"] == CHART_DEFAULTS[svc]["consumerGroup"]
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        auth = next(m for m in by_kind(manifests, "TriggerAuthentication") if m.name == trigger["authenticationRef"]["name"])
        assert {r["parameter"] for r in auth.doc["spec"]["secretTargetRef"]} == {"username", "password"}
    enrich_env = env_of(one(manifests, "Deployment", "enrich").doc["spec"]["template"]["spec"]["containers"][0])
    assert enrich_env["DEALMESH_ENRICH_GROUP_ID"]["value"] == scaled["enrich"]["spec"]["triggers"][0]["metadata"]["consumerGroup"]
    [hpa] = by_kind(manifests, "HorizontalPodAutoscaler")
    assert component(hpa.doc) == "ingest"


def test_without_keda_autoscaling_is_an_hpa():
    on = {svc: {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}} for svc in SERVICES}
    for mode in ("auto", "hpa"):
        manifests = render({"autoscaling": {"mode": mode}, **on})
        assert not by_kind(manifests, "ScaledObject")
        hpas = {component(m.doc): m.doc for m in by_kind(manifests, "HorizontalPodAutoscaler")}
        assert set(hpas) == set(SERVICES)
        assert hpas["crm"]["spec"]["maxReplicas"] == 6


def test_disruption_budgets_select_their_pods(rendered):
    name, manifests = rendered
    pdbs = by_kind(manifests, "PodDisruptionBudget")
    if name == "small-single-namespace.yaml":
        assert not pdbs  # one replica each: a budget would block node drains
        return
    assert len(pdbs) == len(SERVICES)
    for pdb in pdbs:
        deployment = one(manifests, "Deployment", component(pdb.doc)).doc
        assert pdb.doc["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert pdb.doc["spec"]["maxUnavailable"] == 1


# --- network, monitoring, ingress ----------------------------------------------


def test_network_policies_allow_only_the_mesh_paths():
    manifests = render(load_values(CHART / "examples" / "managed-kafka-sasl.yaml"))
    policies = {component(m.doc): m.doc for m in by_kind(manifests, "NetworkPolicy")}
    assert set(policies) == set(SERVICES) | {"hooks", "test", "enrich-redrive"}

    def ingress_ports(svc):
        return {p["port"] for rule in policies[svc]["spec"]["ingress"] for p in rule["ports"]}

    def egress_ports(svc):
        return {p["port"] for rule in policies[svc]["spec"]["egress"] for p in rule["ports"]}

    assert ingress_ports("ingest") == {"grpc", "http", "admin"}
    assert ingress_ports("enrich") == {"admin"}
    for svc in SERVICES:
        assert {53, 9092, 9096, 4318} <= egress_ports(svc)
        assert (5432 in egress_ports(svc)) == (svc in DATABASE_SERVICES), svc
        assert policies[svc]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert 443 in egress_ports("enrich") and 587 in egress_ports("notify")
    # crm calls nothing outside but the OIDC provider's JWKS (jwksUrl is set).
    assert 443 in egress_ports("crm")
    no_jwks = render(deep_merge(load_values(CHART / "examples" / "managed-kafka-sasl.yaml"),
                                {"auth": {"jwksUrl": "", "hs256": {"existingSecret": "jwt"}}}))
    crm = next(m.doc for m in by_kind(no_jwks, "NetworkPolicy") if component(m.doc) == "crm")
    assert 443 not in {p["port"] for rule in crm["spec"]["egress"] for p in rule["ports"]}


def test_service_monitors_scrape_the_admin_port():
    manifests = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}})
    monitors = by_kind(manifests, "ServiceMonitor")
    assert len(monitors) == len(SERVICES)
    for m in monitors:
        service = one(manifests, "Service", component(m.doc)).doc
        assert m.doc["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert m.doc["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s"}]
        assert m.doc["metadata"]["labels"]["release"] == "prom"
        assert "admin" in {p["name"] for p in service["spec"]["ports"]}


def test_only_the_webhook_path_is_exposed():
    manifests = render(load_values(CHART / "examples" / "managed-kafka-sasl.yaml"))
    [ingress] = by_kind(manifests, "Ingress")
    [rule] = ingress.doc["spec"]["rules"]
    assert rule["host"] == "hooks.deals.example.com"
    [path] = rule["http"]["paths"]
    assert path["path"] == "/v1/webhooks" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": f"{RELEASE}-dealmesh-ingest", "port": {"name": "http"}}
    assert ingress.doc["spec"]["tls"] == [{"hosts": ["hooks.deals.example.com"], "secretName": "hooks-deals-example-com"}]


def test_notes_tell_the_installer_what_to_do_next():
    text = notes()
    assert f"helm test {RELEASE} -n deals" in text
    assert "dealmesh-ingest submit --server http://127.0.0.1:50051" in text
    assert "ingest.webhookSources" in text


# --- bad values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"kafka": {"dealLogPartitions": "twelve"}}, "/kafka/dealLogPartitions"),
        ({"crm": {"replicaCount": "two"}}, "/crm/replicaCount"),
        ({"shutdownGraceSeconds": "25s"}, "/shutdownGraceSeconds"),
        ({"telemetry": {"logFormat": "xml"}}, "/telemetry/logFormat"),
        ({"autoscaling": {"mode": "vpa"}}, "/autoscaling/mode"),
        ({"enrich": {"config": {"llmModle": "gpt"}}}, "llmModle"),
        ({"ingest": {"webhookSources": [{"name": "partner-x", "key": "k"}]}}, "existingSecret"),
        ({"notify": {"secrets": {"smtpPassword": {"existingSecret": "smtp"}}}}, "/notify/secrets/smtpPassword"),
        ({"kafka": {"bootstrapServers": "no-port"}}, "/kafka/bootstrapServers"),
        ({"ingst": {"enabled": True}}, "ingst"),
    ],
)
def test_wrong_values_are_rejected_naming_the_value(values, names):
    with pytest.raises(helm.HelmValuesError) as error:
        render(values)
    assert names in str(error.value)


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"database": {"existingSecret": ""}}, "database.existingSecret is required"),
        ({"auth": {"hs256": {"existingSecret": ""}, "jwksUrl": ""}}, "auth.jwksUrl or auth.hs256.existingSecret is required"),
        ({"kafka": {"config": {"sasl.password": "hunter2"}}}, "kafka.config.sasl.password is a secret"),
        ({"webhookRoute": {"enabled": True}}, "webhookRoute.parentRefs is required"),
    ],
)
def test_missing_secret_references_fail_rendering_naming_the_value(values, names):
    with pytest.raises(helm.HelmRenderError) as error:
        render(values)
    assert names in str(error.value)


def test_database_is_only_required_when_a_database_service_is_enabled():
    off = {svc: {"enabled": False} for svc in DATABASE_SERVICES}
    manifests = render({"database": {"existingSecret": ""}, **off})
    assert [component(m.doc) for m in by_kind(manifests, "Deployment")] == ["enrich"]


# --- docs ----------------------------------------------------------------------


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "requests", "limits"):
            yield from _leaves(value, path + ".")
        else:
            yield path


def test_readme_documents_every_value_and_setting():
    readme = (CHART / "README.md").read_text()
    missing = []
    for path in _leaves(CHART_DEFAULTS):
        head, _, rest = path.partition(".")
        if head in SERVICES and not rest.startswith(("consumerGroup", "webhookSources", "config.", "redrive.")):
            path = f"<service>.{rest}"
        if f"`{path}`" not in readme:
            missing.append(path)
    for svc in SERVICES:
        config, secrets = chart_schema.service_settings(svc)
        prefix = f"DEALMESH_{svc.upper()}_"
        for kind, names in (("config", config), ("secrets", secrets)):
            for name in names:
                env = prefix + re.sub(r"([A-Z])", r"_\1", name).upper()
                if f"| `{kind}.{name}` | `{env}` |" not in readme:
                    missing.append(f"{svc}.{kind}.{name}")
    assert not missing, f"helm/dealmesh/README.md does not document: {missing}"


def test_each_database_service_gets_its_own_database():
    manifests = render()
    refs = {}
    for svc in DATABASE_SERVICES:
        env = env_of(one(manifests, "Deployment", svc).doc["spec"]["template"]["spec"]["containers"][0])
        refs[svc] = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert {r["name"] for r in refs.values()} == {"dealmesh-database"}
    assert sorted(r["key"] for r in refs.values()) == sorted(DATABASE_SERVICES)
    enrich = env_of(one(manifests, "Deployment", "enrich").doc["spec"]["template"]["spec"]["containers"][0])
    assert "DATABASE_URL" not in enrich


def test_without_ingest_no_topics_hook_and_services_create_topics():
    manifests = render({"ingest": {"enabled": False}})
    assert "topics" not in {j.doc["spec"]["template"]["spec"]["containers"][0]["args"][0] for j in by_kind(manifests, "Job")}
    for svc in ("enrich", "crm"):
        env = env_of(one(manifests, "Deployment", svc).doc["spec"]["template"]["spec"]["containers"][0])
        assert env["DEALMESH_PROVISION_TOPICS"]["value"] == "true"


def test_files_are_mounted_read_only_and_roll_the_pods_when_they_change():
    def crm(content):
        manifests = render({"crm": {"files": {"stages.txt": content}}})
        deployment = one(manifests, "Deployment", "crm").doc["spec"]["template"]
        configmap = next(m.doc for m in by_kind(manifests, "ConfigMap") if component(m.doc) == "crm")
        return deployment, configmap

    template, configmap = crm("sourced,passed")
    assert configmap["data"] == {"stages.txt": "sourced,passed"}
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == "files")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in template["spec"]["containers"][0]["volumeMounts"] if m["name"] == "files")
    assert mount == {"name": "files", "mountPath": "/etc/dealmesh/files", "readOnly": True}
    changed, _ = crm("sourced,screening,passed")
    assert template["metadata"]["annotations"]["checksum/files"] != changed["metadata"]["annotations"]["checksum/files"]


def test_hook_jobs_get_the_files_before_the_release_exists():
    manifests = render({"ingest": {"files": {"searches.json": "{}"},
                                   "config": {"crunchbaseSearchesFile": "/etc/dealmesh/files/searches.json"}}})
    hook_copy = next(m for m in by_kind(manifests, "ConfigMap") if m.name.endswith("-hook-files"))
    assert hook_copy.doc["data"] == {"searches.json": "{}"}
    jobs = [j for j in by_kind(manifests, "Job") if component(j.doc) == "ingest"]
    assert {j.doc["spec"]["template"]["spec"]["containers"][0]["args"][0] for j in jobs} == {"migrate", "topics"}
    for job in jobs:
        assert int(hook_copy.annotations["helm.sh/hook-weight"]) < int(job.annotations["helm.sh/hook-weight"])
        assert job.annotations["helm.sh/hook"] == hook_copy.annotations["helm.sh/hook"]
        volume = next(v for v in job.doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "files")
        assert volume["configMap"]["name"] == hook_copy.name
    serve = one(manifests, "Deployment", "ingest").doc["spec"]["template"]["spec"]
    assert next(v for v in serve["volumes"] if v["name"] == "files")["configMap"]["name"] == f"{RELEASE}-dealmesh-ingest-files"


def test_failed_enrichments_are_redriven_on_a_schedule_by_their_own_pods():
    manifests = render(load_values(CHART / "examples" / "managed-kafka-sasl.yaml"))
    [cron] = by_kind(manifests, "CronJob")
    assert component(cron.doc) == "enrich-redrive"
    spec = cron.doc["spec"]
    assert spec["schedule"] == "17 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0
    pod = pod_spec(cron.doc)
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["args"] == ["redrive", "--since", "48h"]
    enrich = one(manifests, "Deployment", "enrich").doc["spec"]["template"]["spec"]
    # Enrich's identity, image and configuration...
    assert pod["serviceAccountName"] == enrich["serviceAccountName"]
    assert container["image"] == enrich["containers"][0]["image"]
    assert container["env"] == enrich["containers"][0]["env"]
    # ...but not its labels: the Service, budget and autoscaler never see it.
    labels = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    for selecting in (one(manifests, "Service", "enrich").doc["spec"]["selector"],
                      one(manifests, "PodDisruptionBudget", "enrich").doc["spec"]["selector"]["matchLabels"]):
        assert not selecting.items() <= labels.items()
    # Its own policy: out to DNS, Kafka and the providers, nothing in.
    policy = next(m.doc for m in by_kind(manifests, "NetworkPolicy") if component(m.doc) == "enrich-redrive")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["ingress"] == []
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 9092, 443} <= egress and 5432 not in egress

    off = render({"enrich": {"redrive": {"enabled": False}}})
    assert not by_kind(off, "CronJob")
    assert not by_kind(render({"enrich": {"enabled": False}}), "CronJob")


def test_every_pod_of_the_release_is_scheduled_as_pod_defaults_say():
    scheduling = {
        "priorityClassName": "dealflow-critical",
        "nodeSelector": {"pool": "apps"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "dealmesh", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["apps"]}]}]}}},
    }
    manifests = render({"podDefaults": scheduling, "enrich": {"redrive": {"enabled": True}}})
    pods = {(m.doc["kind"], m.doc["metadata"]["name"]): pod_spec(m.doc) for m in manifests if pod_spec(m.doc)}
    # Services, migration and topic hooks, the redrive CronJob and the
    # `helm test` pods alike: a hook that lands on a node the services may
    # not use blocks the upgrade.
    assert {kind for kind, _ in pods} == {"Deployment", "Job", "CronJob", "Pod"}
    for name, pod in pods.items():
        assert {k: pod.get(k) for k in scheduling} == scheduling, name

    plain = render({"enrich": {"redrive": {"enabled": True}}})
    for m in plain:
        if pod := pod_spec(m.doc):
            assert not set(scheduling) & set(pod), m.doc["metadata"]["name"]
