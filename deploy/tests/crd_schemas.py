"""Structural schemas of the custom resources the chart renders.

The Kubernetes schemas bundled with kubernetes-validate cover only built-in
kinds, and no CRD schema can be downloaded during the tests. These hold the
fields of the upstream CRDs that this chart uses (KEDA v2
`keda.sh/v1alpha1`, Prometheus Operator `monitoring.coreos.com/v1`, Gateway
API `gateway.networking.k8s.io/v1`), with unknown fields rejected, so a typo
in a template fails the tests instead of the install.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string", "minLength": 1}
_INT = {"type": "integer"}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STR, "namespace": _STR, "labels": {"type": "object"}, "annotations": {"type": "object"}},
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": spec,
        },
    }


SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): _resource("keda.sh/v1alpha1", "ScaledObject", {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {"name": _STR, "apiVersion": _STR, "kind": _STR, "envSourceContainerName": _STR},
            },
            "pollingInterval": _INT, "cooldownPeriod": _INT, "initialCooldownPeriod": _INT,
            "idleReplicaCount": _INT, "minReplicaCount": _INT, "maxReplicaCount": _INT,
            "fallback": {"type": "object"}, "advanced": {"type": "object"},
            "triggers": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                    "properties": {
                        "type": _STR, "name": _STR, "useCachedMetrics": {"type": "boolean"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        # KEDA reads trigger metadata as strings.
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "authenticationRef": {
                            "type": "object", "required": ["name"], "additionalProperties": False,
                            "properties": {"name": _STR, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}},
                        },
                    },
                },
            },
        },
    }),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _resource("keda.sh/v1alpha1", "TriggerAuthentication", {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "items": {
                    "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                    "properties": {"parameter": _STR, "name": _STR, "key": _STR},
                },
            },
            "env": {"type": "array"}, "podIdentity": {"type": "object"},
            "configMapTargetRef": {"type": "array"}, "hashiCorpVault": {"type": "object"},
        },
    }),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
            "namespaceSelector": {"type": "object"}, "jobLabel": _STR,
            "endpoints": {
                "type": "array", "minItems": 1,
                "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": _STR, "targetPort": {}, "path": _STR, "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": _STR, "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
                        "honorLabels": {"type": "boolean"}, "tlsConfig": {"type": "object"},
                    },
                },
            },
        },
    }),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _resource("gateway.networking.k8s.io/v1", "HTTPRoute", {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "parentRefs": {
                "type": "array", "minItems": 1,
                "items": {"type": "object", "required": ["name"], "properties": {"name": _STR, "namespace": _STR, "sectionName": _STR, "port": _INT}},
            },
            "hostnames": {"type": "array", "items": _STR},
            "rules": {
                "type": "array",
                "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "matches": {"type": "array", "items": {"type": "object", "properties": {
                            "path": {"type": "object", "additionalProperties": False, "properties": {
                                "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]}, "value": _STR}}}}},
                        "backendRefs": {"type": "array", "items": {
                            "type": "object", "required": ["name", "port"],
                            "properties": {"name": _STR, "port": _INT, "weight": _INT, "kind": _STR, "group": {"type": "string"}}}},
                        "filters": {"type": "array"}, "timeouts": {"type": "object"},
                    },
                },
            },
        },
    }),
}
