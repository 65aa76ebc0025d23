"""checkov's Kubernetes scan of the rendered chart reports no failed check.

The checks the chart does not meet are skipped per resource with a written
reason (templates/_checkov.tpl, listed in the chart README); this test fails
on a new finding, on a skip without a reason, and on a reason nobody wrote
down in the README.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CHART, deep_merge, load_values, render, value_sets

CHECKOV = Path(sys.executable).with_name("checkov")


def documented_reasons() -> dict[str, str]:
    text = (CHART / "templates" / "_checkov.tpl").read_text()
    block = text.split('define "dealmesh.checkovReasons" -}}', 1)[1].split("{{- end }}", 1)[0]
    return yaml.safe_load(block)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered")
    sets = value_sets() + [(
        "everything-on",
        deep_merge(load_values(CHART / "examples" / "managed-kafka-sasl.yaml"),
                   {"webhookRoute": {"enabled": True, "parentRefs": [{"name": "public"}]},
                    "tests": {"image": "docker.io/library/busybox@sha256:" + "0" * 64},
                    "image": {"digest": "sha256:" + "1" * 64}}),
    )]
    for name, values in sets:
        docs = [m.doc for m in render(values)]
        (out / f"{Path(name).stem}.yaml").write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [str(CHECKOV), "--directory", str(out), "--framework", "kubernetes",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    return report if isinstance(report, dict) else next(r for r in report if r["check_type"] == "kubernetes")


def test_no_failed_checks(scan):
    failed = [(f["check_id"], f["check_name"], f["resource"]) for f in scan["results"]["failed_checks"]]
    assert not failed, failed
    assert scan["summary"]["parsing_errors"] == 0
    assert scan["summary"]["resource_count"] > 100
    assert scan["summary"]["passed"] > 1000


def test_every_skip_carries_its_written_reason(scan):
    reasons = documented_reasons()
    skipped = scan["results"]["skipped_checks"]
    assert skipped
    for s in skipped:
        assert s["check_id"] in reasons, s["check_id"]
        assert s["check_result"]["suppress_comment"] == reasons[s["check_id"]], s["resource"]


def test_probe_skips_only_on_run_to_completion_pods(scan):
    for s in scan["results"]["skipped_checks"]:
        if s["check_id"] in ("CKV_K8S_8", "CKV_K8S_9"):
            assert re.match(r"^(Job|Pod|CronJob)\.", s["resource"]), s["resource"]
        if s["check_id"] == "CKV_K8S_31":
            # Only where checkov cannot see the pod's seccomp profile.
            assert s["resource"].startswith("CronJob."), s["resource"]
        if s["check_id"] == "CKV_K8S_43":
            # With digests set, nothing skips the digest check.
            assert "everything-on" not in s["file_path"], s["resource"]


def test_reasons_are_in_the_chart_readme():
    readme = (CHART / "README.md").read_text()
    for check_id in documented_reasons():
        assert check_id in readme
