"""Generates helm/dealmesh/values.schema.json and the chart README's table
of service settings.

The per-service `config` and `secrets` properties are derived from the env
keys the service's sources declare (envkeys.py), so a value the service does
not read is rejected by name, and the README documents each one with the
doc comment of its constant. Regenerate after a service's config changes:

    python deploy/tests/chart_schema.py --write

test_chart.py fails while the committed schema differs from this output,
or while the README lacks a row for a setting.
"""

from __future__ import annotations

import json
import re
import sys

import envkeys

CHART = envkeys.REPO / "helm" / "dealmesh"
BEGIN = "<!-- service-settings:begin (python deploy/tests/chart_schema.py --write) -->"
END = "<!-- service-settings:end -->"

# Settings the chart sets itself from its own values (ports, database,
# drain, topics, consumer group), so they are not in a service's `config`.
CHART_MANAGED = re.compile(r"_(GRPC|HTTP|ADMIN)_ADDR$|_GROUP_ID$|_CONSUMER_GROUP$")
# Settings that are secrets: only by reference to an existing Secret.
SECRET = re.compile(r"_(TOKEN|API_KEY|USER_KEY|PASSWORD|SECRET)$")


def camel(suffix: str) -> str:
    """`GITHUB_API_URL` -> `githubApiUrl` (the chart's snakecase | upper inverts it)."""
    first, *rest = suffix.lower().split("_")
    return first + "".join(w.capitalize() for w in rest)


def service_settings(service: str) -> tuple[list[str], list[str]]:
    """(config keys, secret keys) of a service, as camelCase value names."""
    prefix = f"DEALMESH_{service.upper()}_"
    config, secrets = [], []
    for key in sorted(envkeys.service_keys(service).exact):
        if not key.startswith(prefix) or CHART_MANAGED.search(key):
            continue
        (secrets if SECRET.search(key) else config).append(camel(key[len(prefix):]))
    return config, secrets


S = lambda **k: dict(type="string", **k)
I = lambda **k: dict(type="integer", **k)
B = lambda **k: dict(type="boolean", **k)
def O(props, required=(), addl=False, **k):
    d = dict(type="object", properties=props, additionalProperties=addl, **k)
    if required: d["required"] = list(required)
    return d
secret_name = {"type": "string", "pattern": "^$|^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253,
               "description": "Name of an existing Secret (empty for none)"}
key = {"type": "string", "minLength": 1, "pattern": "^[-._a-zA-Z0-9]+$"}
quantity = {"type": ["string", "integer", "number"]}
resources = O({"requests": {"type": "object", "additionalProperties": quantity},
               "limits": {"type": "object", "additionalProperties": quantity}})
port = I(minimum=1, maximum=65535)
env_list = {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": S(pattern="^[A-Za-z_][A-Za-z0-9_]*$")}}}
peers = {"type": "array", "items": {"type": "object"}}
ports = {"type": "array", "items": port}

def service(name, extra=None, ports_props=None, consumer=False):
    props = {
        "enabled": B(description="Deploy this service"),
        "replicaCount": I(minimum=0),
        "image": O({"repository": S(), "tag": S()}),
        "ports": O(ports_props, required=list(ports_props)),
        "resources": resources,
        "serviceAccount": O({"create": B(), "name": S(), "annotations": {"type": "object", "additionalProperties": S()}}),
        "service": O({"type": S(enum=["ClusterIP", "NodePort", "LoadBalancer"]), "annotations": {"type": "object", "additionalProperties": S()}}),
        "autoscaling": O({"enabled": B(), "minReplicas": I(minimum=1), "maxReplicas": I(minimum=1),
                          "targetCPUUtilizationPercentage": I(minimum=1, maximum=100)}),
        "pdb": O({"enabled": B(), "maxUnavailable": {"type": ["integer", "string"]}}),
        "extraEnv": env_list,
    }
    config, secrets = service_settings(name)
    props["config"] = O({k: {"type": ["string", "integer", "number", "boolean", "null"]} for k in config},
                        description=f"Settings of {name}; unknown names are rejected")
    props["secrets"] = O({k: O({"existingSecret": S(minLength=1), "key": key}, required=["existingSecret", "key"]) for k in secrets},
                         description=f"Secret settings of {name}, by reference")
    props["files"] = {"type": "object", "additionalProperties": S(), "propertyNames": {"pattern": "^[-._a-zA-Z0-9]+$"}}
    if consumer:
        props["consumerGroup"] = S(minLength=1, description="Consumer group id of the service")
    props.update(extra or {})
    return O(props, required=["enabled"])

schema = {
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "dealmesh chart values",
  "type": "object",
  "additionalProperties": False,
  "properties": {
    "global": {"type": "object"},
    "nameOverride": S(), "fullnameOverride": S(),
    "image": O({"registry": S(minLength=1), "repository": S(minLength=1), "tag": S(),
                "digest": S(pattern="^$|^sha256:[a-f0-9]{64}$"),
                "pullPolicy": S(enum=["Always", "IfNotPresent", "Never"])}),
    "imagePullSecrets": {"type": "array", "items": S(minLength=1)},
    "kafka": O({
        "bootstrapServers": S(description="host:port list of your Kafka cluster", pattern="^[^,\\s]+:[0-9]+(,[^,\\s]+:[0-9]+)*$"),
        "topicPrefix": S(pattern="^[A-Za-z0-9._-]*$"),
        "dealLogPartitions": I(minimum=1),
        "replicationFactor": I(minimum=1),
        "deadLetterRetention": S(pattern="^[0-9]+(ms|s|m|h|d)$"),
        "config": {"type": "object", "description": "librdkafka properties (non-secret)",
                   "propertyNames": {"pattern": "^[a-z][a-z0-9.]*$"},
                   "additionalProperties": {"type": ["string", "integer", "boolean"]}},
        "sasl": O({"existingSecret": secret_name, "usernameKey": key, "passwordKey": key}),
        "tls": O({"existingSecret": secret_name, "caKey": key, "certKey": S(), "keyKey": S(), "keyPasswordKey": S()}),
    }),
    "database": O({"existingSecret": secret_name,
                   "urlKeys": O({svc: key for svc in ("ingest", "scoring", "crm", "notify")}),
                   "maxConnections": I(minimum=1)}),
    "auth": O({"jwksUrl": S(pattern="^$|^https?://"), "issuer": S(), "audience": S(),
               "hs256": O({"existingSecret": secret_name, "key": key})}),
    "telemetry": O({"logLevel": S(minLength=1), "logFormat": S(enum=["json", "text"]),
                    "otlpEndpoint": S(pattern="^$|^https?://")}),
    "shutdownGraceSeconds": I(minimum=1, maximum=3600),
    "podDefaults": O({"podSecurityContext": {"type": "object"}, "securityContext": {"type": "object"},
                      "podAnnotations": {"type": "object", "additionalProperties": S()},
                      "podLabels": {"type": "object", "additionalProperties": S()},
                      "nodeSelector": {"type": "object", "additionalProperties": S()},
                      "tolerations": {"type": "array"}, "affinity": {"type": "object"},
                      "priorityClassName": S(), "topologySpreadConstraints": {"type": "array"}}),
    "probes": O({k: O({"periodSeconds": I(minimum=1), "timeoutSeconds": I(minimum=1), "failureThreshold": I(minimum=1)})
                 for k in ["liveness", "readiness", "startup"]}),
    "hooks": O({"migrations": O({"enabled": B()}), "topics": O({"enabled": B()}),
                "activeDeadlineSeconds": I(minimum=1), "backoffLimit": I(minimum=0), "resources": resources}),
    "autoscaling": O({"mode": S(enum=["auto", "hpa", "keda"]),
                      "keda": O({"lagThreshold": I(minimum=1), "pollingInterval": I(minimum=1), "cooldownPeriod": I(minimum=0),
                                 "sasl": S(enum=["none", "plaintext", "scram_sha256", "scram_sha512", "oauthbearer", "gssapi"]),
                                 "tls": S(enum=["enable", "disable"])})}),
    "networkPolicy": O({"enabled": B(), "apiClients": peers, "metricsScrapers": peers,
                        "kafkaPeers": peers, "kafkaPorts": ports, "databasePeers": peers, "databasePorts": ports,
                        "otlpPeers": peers, "otlpPorts": ports, "internetPorts": ports}),
    "serviceMonitor": O({"enabled": B(), "interval": S(pattern="^[0-9]+(ms|s|m|h)$"), "labels": {"type": "object", "additionalProperties": S()}}),
    "webhookIngress": O({"enabled": B(), "className": S(), "host": S(), "annotations": {"type": "object", "additionalProperties": S()}, "tlsSecretName": S()}),
    "webhookRoute": O({"enabled": B(), "parentRefs": {"type": "array", "items": {"type": "object", "required": ["name"]}}, "hostnames": {"type": "array", "items": S()}}),
    "tests": O({"image": S(minLength=1), "resources": resources}),
    "ingest": service("ingest", {
        "webhookSources": {"type": "array", "items": O({
            "name": S(pattern="^[a-z0-9][a-z0-9-]*$", description="webhook source name, lower-case"),
            "existingSecret": S(minLength=1), "key": key}, required=["name", "existingSecret", "key"])},
    }, {"grpc": port, "http": port, "admin": port}),
    "enrich": service("enrich", {
        "redrive": O({"enabled": B(description="Run `dealmesh-enrich redrive` on a schedule"),
                      "schedule": S(minLength=1, pattern="^\\S+( \\S+){4}$|^@[a-z]+$", description="cron schedule"),
                      "since": S(pattern="^[0-9]+(ms|s|m|h|d)$", description="--since window, e.g. 48h"),
                      "activeDeadlineSeconds": I(minimum=1),
                      "resources": resources}),
    }, {"admin": port}, consumer=True),
    "scoring": service("scoring", {}, {"grpc": port, "admin": port}, consumer=True),
    "crm": service("crm", {}, {"grpc": port, "admin": port}, consumer=True),
    "notify": service("notify", {}, {"grpc": port, "admin": port}, consumer=True),
  },
}


def settings_tables() -> str:
    """Markdown: each service's `config` and `secrets`, with their variables."""
    out = []
    for svc in envkeys.SERVICES:
        prefix = f"DEALMESH_{svc.upper()}_"
        docs = envkeys.key_docs(svc)
        config, secrets = service_settings(svc)
        out += ["", f"`{svc}`:", "", "| Value | Variable | Meaning |", "|---|---|---|"]
        for kind, names in (("config", config), ("secrets", secrets)):
            for name in names:
                env = prefix + re.sub(r"([A-Z])", r"_\1", name).upper()
                meaning = docs.get(env, "").replace("|", "\\|")
                out.append(f"| `{kind}.{name}` | `{env}` | {meaning} |")
        if not config and not secrets:
            out.append("| | | none yet |")
    return "\n".join(out) + "\n"


def schema_text() -> str:
    return json.dumps(schema, indent=2) + "\n"


def readme_text() -> str:
    readme = (CHART / "README.md").read_text()
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + settings_tables() + END + tail


def main() -> None:
    if sys.argv[1:] == ["--write"]:
        (CHART / "values.schema.json").write_text(schema_text())
        (CHART / "README.md").write_text(readme_text())
    else:
        sys.stdout.write(schema_text())


if __name__ == "__main__":
    main()
