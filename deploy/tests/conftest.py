"""Shared helpers: render the chart offline with Helm's own Go SDK
(helm-python-sdk, no helm binary, no cluster) and parse the manifests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "dealmesh"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
RELEASE = "dm"
NAMESPACE = "deals"


@dataclass
class Manifest:
    template: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    @property
    def annotations(self) -> dict[str, str]:
        return self.doc["metadata"].get("annotations") or {}

    def __repr__(self) -> str:
        return f"{self.kind}/{self.name} ({self.template})"


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def render_raw(values: dict[str, Any] | None = None, **opts: Any) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(
            values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True, **opts
        )


def render(values: dict[str, Any] | None = None) -> list[Manifest]:
    """Every manifest the chart renders (hooks and test pods included)."""
    manifests = []
    for template, text in sorted(render_raw(values).items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests.append(Manifest(template, doc))
    return manifests


def notes(values: dict[str, Any] | None = None) -> str:
    return next(t for k, t in render_raw(values).items() if k.endswith("NOTES.txt"))


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload or pod, else None."""
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def component(doc: dict[str, Any]) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def value_sets() -> list[tuple[str, dict[str, Any]]]:
    """The default values and every example values file."""
    return [("default", {})] + [(p.name, load_values(p)) for p in EXAMPLES]


@pytest.fixture(params=value_sets(), ids=lambda v: v[0])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    name, values = request.param
    return name, render(values)
