"""The environment keys each service reads, extracted from the Rust sources.

Every key a service reads is a named constant (`pub const NAME: &str =
"ENV_KEY";`) in its crate or in a shared crate it depends on (see
CONVENTIONS.md); a value ending in `_` is a prefix family such as `KAFKA_`
(passed through to librdkafka) or `DEALMESH_WEBHOOK_SECRET_`. Reading the
sources at test time is what keeps the chart and compose from drifting away
from the code.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "enrich", "scoring", "crm", "notify")

_CONST = re.compile(
    r"""\bconst\s+[A-Z][A-Z0-9_]*\s*:\s*&\s*(?:'static\s+)?str\s*=\s*"([^"\\]*)"\s*;"""
)
# An environment key: upper-case words joined by `_` (`DATABASE_URL`), or a
# prefix ending in `_` (`KAFKA_`).
_ENV_KEY = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_?$")
_CFG_TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")


@dataclass
class EnvKeys:
    """Exact keys and prefix families, each with the file that declares it."""

    exact: dict[str, str] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)

    def update(self, other: EnvKeys) -> None:
        self.exact.update(other.exact)
        self.prefixes.update(other.prefixes)

    def family_of(self, name: str) -> str | None:
        """The declared prefix family `name` belongs to, if any."""
        matches = [p for p in self.prefixes if name.startswith(p) and len(name) > len(p)]
        return max(matches, key=len) if matches else None

    def reads(self, name: str) -> bool:
        return name in self.exact or self.family_of(name) is not None


def _strip_comments_and_tests(text: str) -> str:
    """Drops `//` comments and `#[cfg(test)] mod ... { }` blocks, so keys
    used only in tests or prose do not count as read."""
    text = re.sub(r"(?m)^\s*//.*$", "", text)
    while (match := _CFG_TEST_MOD.search(text)) is not None:
        depth, i, in_str = 1, match.end(), False
        while i < len(text) and depth:
            c = text[i]
            if in_str:
                if c == "\\":
                    i += 1
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            i += 1
        text = text[: match.start()] + text[i:]
    return text


def _keys_of_file(path: Path, keys: EnvKeys) -> None:
    text = _strip_comments_and_tests(path.read_text(encoding="utf-8"))
    for value in _CONST.findall(text):
        if "_" not in value or not _ENV_KEY.match(value):
            continue
        where = str(path.relative_to(REPO))
        if value.endswith("_"):
            keys.prefixes[value] = where
        else:
            keys.exact[value] = where


def keys_of_crate(crate_dir: Path) -> EnvKeys:
    """The env-key constants declared in one crate's `src/`."""
    keys = EnvKeys()
    for path in sorted((crate_dir / "src").rglob("*.rs")):
        _keys_of_file(path, keys)
    return keys


_TOP_LEVEL_TYPE = re.compile(r"(?m)^pub\s+(?:struct|enum|trait|type)\s+([A-Z]\w*)")


def _uses_module(user_text: str, crate_dir: Path, path: Path, *, inside: bool = False) -> bool:
    """Whether code uses the shared-crate module `path`: it names the module
    (`dealmesh_runtime::database`, or `crate::database` from `inside` the
    same crate) or one of the types it declares (`DatabaseSettings`); a
    crate root counts when the crate is named at all. Keys of a shared
    module a service never reaches (a database module in a service without
    a database) are not read by it."""
    crate = "dealmesh_" + crate_dir.name
    rel = path.relative_to(crate_dir / "src").with_suffix("")
    if rel.name == "lib":
        return inside or re.search(rf"\b{crate}\b", user_text) is not None
    module = "::".join(rel.parts)
    prefix = rf"(?:{crate}|crate)" if inside else crate
    if re.search(rf"\b{prefix}::(?:\{{[^}}]*\b)?{module}\b", user_text):
        return True
    types = _TOP_LEVEL_TYPE.findall(_strip_comments_and_tests(path.read_text(encoding="utf-8")))
    return any(re.search(rf"\b{t}\b", user_text) for t in types)


def _path_dependencies(crate_dir: Path) -> list[Path]:
    """Shared crates under crates/ this crate depends on (not dev-deps)."""
    manifest = tomllib.loads((crate_dir / "Cargo.toml").read_text(encoding="utf-8"))
    root = tomllib.loads((REPO / "Cargo.toml").read_text(encoding="utf-8"))
    workspace_deps = root.get("workspace", {}).get("dependencies", {})
    found = []
    for name, spec in manifest.get("dependencies", {}).items():
        if isinstance(spec, dict) and spec.get("workspace"):
            spec, base = workspace_deps.get(name, {}), REPO
        else:
            base = crate_dir
        if isinstance(spec, dict) and "path" in spec:
            dep_dir = (base / spec["path"]).resolve()
            if dep_dir.parent == REPO / "crates":
                found.append(dep_dir)
    return found


def service_keys(service: str) -> EnvKeys:
    """Every key the service's binary reads: its own crate's keys, and those
    of the shared-crate modules (runtime, eventlog, auth, ...) it reaches:
    the ones its sources use, and the ones those modules use in turn."""
    crate = REPO / "services" / service
    keys = keys_of_crate(crate)
    service_text = "\n".join(
        _strip_comments_and_tests(p.read_text(encoding="utf-8")) for p in sorted((crate / "src").rglob("*.rs"))
    )
    deps: list[Path] = []
    queue = _path_dependencies(crate)
    while queue:
        dep = queue.pop()
        if dep not in deps:
            deps.append(dep)
            queue.extend(_path_dependencies(dep))
    modules = [(dep, path) for dep in deps for path in sorted((dep / "src").rglob("*.rs"))]
    used: dict[Path, str] = {}
    changed = True
    while changed:
        changed = False
        for dep, path in modules:
            if path in used:
                continue
            same_crate = "\n".join(t for p, t in used.items() if dep in p.parents)
            other = "\n".join([service_text] + [t for p, t in used.items() if dep not in p.parents])
            if _uses_module(other, dep, path) or (
                same_crate and _uses_module(same_crate, dep, path, inside=True)
            ):
                used[path] = _strip_comments_and_tests(path.read_text(encoding="utf-8"))
                _keys_of_file(path, keys)
                changed = True
    return keys


def has_binary(service: str) -> bool:
    """Whether the service's crate builds a binary yet."""
    crate = REPO / "services" / service
    manifest = tomllib.loads((crate / "Cargo.toml").read_text(encoding="utf-8"))
    declared = any(b.get("name") == f"dealmesh-{service}" for b in manifest.get("bin", []))
    return (declared or not manifest.get("bin")) and (crate / "src" / "main.rs").exists()


def key_docs(service: str) -> dict[str, str]:
    """The doc comment of each env-key constant in the service's crate."""
    docs: dict[str, str] = {}
    for path in sorted((REPO / "services" / service / "src").rglob("*.rs")):
        lines: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith("///"):
                lines.append(stripped[3:].strip())
                continue
            match = _CONST.search(stripped)
            if match:
                docs.setdefault(match.group(1), " ".join(lines))
            lines = []
    return docs
