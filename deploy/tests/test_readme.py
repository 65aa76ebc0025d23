"""The README's configuration reference names every environment variable
every service reads, read from the Rust sources, so a new setting cannot ship
undocumented."""

from __future__ import annotations

import re

import pytest

from envkeys import REPO, SERVICES, service_keys

README = (REPO / "README.md").read_text(encoding="utf-8")
# Names written as code in the README: `DATABASE_URL`, `KAFKA_<NAME>`.
DOCUMENTED = set(re.findall(r"`([A-Z][A-Z0-9_]*)(?:<[A-Z]+>)?`", README))


@pytest.mark.parametrize("service", SERVICES)
def test_every_key_the_service_reads_is_in_the_readme(service: str) -> None:
    keys = service_keys(service)
    missing = sorted(
        [key for key in keys.exact if key not in DOCUMENTED]
        + [f"{prefix}<...>" for prefix in keys.prefixes if prefix not in DOCUMENTED]
    )
    assert not missing, (
        f"dealmesh-{service} reads {', '.join(missing)}, which README.md's "
        "configuration reference does not document"
    )
