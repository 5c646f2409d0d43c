"""A node function's package.json and package-lock.json: checked and normalised at deploy, before anything is
fetched. The node twin of jobs.requirements.

A lockfile is required (npm 7 or later: `lockfileVersion` 2 or 3), so the build installs exactly what it names.
Every dependency must come from the registry: a spec in package.json (and in the lockfile's entries) is a version,
a range or a dist-tag, or an `npm:` alias of one; `git+...`, `github:`, `file:`, `link:`, URLs and `user/repo`
shorthands are refused, as are lockfile entries that are links, bundled, or `resolved` anywhere but the registry
(https://registry.npmjs.org/, which npm rewrites to its configured registry, or DEPENDENCY_NPM_REGISTRY). The
registry is the operator's setting, never the user's: the build writes only the normalised files below, so an
`.npmrc` in the upload is never read. Problems are refused with `invalid_dependencies` naming the file and entry.

Whether a package needs an install script is the build's to refuse (`dependency_build_failed`): it reads
`hasInstallScript` in the lockfile before fetching, and the installed packages' own package.json in the sandbox.

The normalised text (both files as canonical JSON, the project's own name, version and scripts left out) is what the
layer's content address is made from, so two projects with the same dependencies share one layer.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from core.errors import DomainError

PACKAGE_JSON = "package.json"
PACKAGE_LOCK = "package-lock.json"
MAX_TEXT_BYTES = 1024 * 1024
MAX_PACKAGES = 2000
NPM_PUBLIC_REGISTRY = "https://registry.npmjs.org/"
# What the build's package.json keeps of the project's: its dependencies, nothing that runs or points elsewhere.
DEPENDENCY_FIELDS = ("dependencies", "optionalDependencies", "peerDependencies", "devDependencies")
REFUSED_FIELDS = ("bundleDependencies", "bundledDependencies", "workspaces")
LAYER_PROJECT = {"name": "ainode-layer", "version": "0.0.0"}
_NAME = re.compile(r"^(@[A-Za-z0-9][A-Za-z0-9._~-]*/)?[A-Za-z0-9][A-Za-z0-9._~-]*$")
_RANGE = re.compile(r"^[A-Za-z0-9.^~<>=|*+ -]*$")
_VERSION = re.compile(r"^[0-9A-Za-z.+-]+$")
_ENTRY = re.compile(r"^node_modules/(@[^/]+/)?[^/@][^/]*(/node_modules/(@[^/]+/)?[^/@][^/]*)*$")


class DependenciesRejected(DomainError):
    code = "invalid_dependencies"


@dataclass(frozen=True)
class NodePackages:
    """A checked package.json and lockfile, as one normalised text (empty: no dependencies)."""

    text: str

    def __bool__(self) -> bool:
        return bool(self.text)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """The build's package.json and package-lock.json."""
        return json.loads(self.text) if self.text else {}

    @property
    def requested(self) -> list[str]:
        """The names the project depends on (a warm container loads them while it waits)."""
        return sorted(self.files.get(PACKAGE_JSON, {}).get("dependencies", {}))

    def with_install_scripts(self) -> list[str]:
        """`name@version` of every package the lockfile says has an install script (dev-only ones aside)."""
        entries = self.files.get(PACKAGE_LOCK, {}).get("packages", {})
        return sorted(f"{entry.get('name') or _name_of(path)}@{entry.get('version')}"
                      for path, entry in entries.items()
                      if path and entry.get("hasInstallScript") and not entry.get("dev"))


def parse_node_packages(package_json: str | bytes, package_lock: str | bytes | None) -> NodePackages:
    """Check a project's package.json and package-lock.json and return their normalised form.

    Raises DependenciesRejected (`invalid_dependencies`) when either is not a JSON object, the lockfile is missing
    or too old, or a dependency does not come from the registry; the message names the file and the entry.
    """
    project = _load(PACKAGE_JSON, package_json)
    if package_lock is None:
        raise DependenciesRejected(f"{PACKAGE_LOCK} is required beside {PACKAGE_JSON}, so that the build installs "
                                   f"exactly the versions you tested: run `npm install --package-lock-only` and "
                                   f"deploy it too.", file=PACKAGE_LOCK)
    lock = _load(PACKAGE_LOCK, package_lock)
    for field in REFUSED_FIELDS:
        if project.get(field):
            raise _rejected(PACKAGE_JSON, field, "bundled dependencies and workspaces are refused")
    dependencies = {field: _checked_specs(PACKAGE_JSON, field, project.get(field)) for field in DEPENDENCY_FIELDS}
    dependencies = {field: specs for field, specs in dependencies.items() if specs}
    if not dependencies:
        return NodePackages("")
    packages = _checked_lock(lock)
    packages[""] = {**LAYER_PROJECT, **{field: specs for field, specs in _root_fields(packages).items()}}
    normalised = {
        PACKAGE_JSON: {**LAYER_PROJECT, "private": True, **dependencies},
        PACKAGE_LOCK: {**LAYER_PROJECT, "lockfileVersion": lock["lockfileVersion"], "requires": True,
                       "packages": packages},
    }
    return NodePackages(json.dumps(normalised, sort_keys=True, indent=1, ensure_ascii=False) + "\n")


def _load(name: str, data: str | bytes) -> dict[str, Any]:
    if isinstance(data, str):
        data = data.encode()
    if len(data) > MAX_TEXT_BYTES:
        raise DependenciesRejected(f"{name} is larger than {MAX_TEXT_BYTES} bytes.", file=name)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DependenciesRejected(f"{name} is not JSON text ({exc}).", file=name) from None
    if not isinstance(value, dict):
        raise DependenciesRejected(f"{name} is not a JSON object.", file=name)
    return value


def _checked_specs(file: str, where: str, specs: Any) -> dict[str, str]:
    if specs is None:
        return {}
    if not isinstance(specs, dict):
        raise _rejected(file, where, "not an object of package names and versions")
    for name, spec in specs.items():
        if not _NAME.match(name) or len(name) > 214:
            raise _rejected(file, f"{where}.{name}", "not a package name")
        problem = _spec_problem(spec)
        if problem:
            raise _rejected(file, f"{where}.{name}", f"{spec!r}: {problem}")
    return dict(specs)


def _spec_problem(spec: Any) -> str | None:
    """Why `spec` would make npm fetch from anywhere but the registry; None if it would not."""
    if not isinstance(spec, str) or len(spec) > 256:
        return "not a version"
    if spec.startswith("npm:"):  # an alias: another name, of the registry
        alias = spec[4:]
        scoped = alias.startswith("@")
        name, _, version = alias[scoped:].partition("@")
        name = "@" * scoped + name
        return None if _NAME.match(name) and _RANGE.match(version) else "not an alias of a registry package"
    if not _RANGE.match(spec):
        return ("only versions of the registry are accepted; git, github:, file:, link:, URLs and user/repo "
                "shorthands are refused")
    return None


def _checked_lock(lock: dict[str, Any]) -> dict[str, Any]:
    if lock.get("lockfileVersion") not in (2, 3) or not isinstance(lock.get("packages"), dict):
        raise DependenciesRejected(f"{PACKAGE_LOCK} must be lockfileVersion 2 or 3 (npm 7 or later); run "
                                   f"`npm install --package-lock-only` with a recent npm.", file=PACKAGE_LOCK)
    packages = lock["packages"]
    if len(packages) > MAX_PACKAGES:
        raise DependenciesRejected(f"{PACKAGE_LOCK} names more than {MAX_PACKAGES} packages.", file=PACKAGE_LOCK)
    checked: dict[str, Any] = {"": packages.get("", {})}
    if not isinstance(checked[""], dict):
        raise _rejected(PACKAGE_LOCK, "packages[\"\"]", "not an object")
    for path, entry in packages.items():
        if path:
            checked[path] = _checked_entry(path, entry)
    return checked


def _checked_entry(path: str, entry: Any) -> dict[str, Any]:
    where = f"packages[{path!r}]"
    if not isinstance(entry, dict):
        raise _rejected(PACKAGE_LOCK, where, "not an object")
    if not _ENTRY.match(path) or ".." in path.split("/"):
        raise _rejected(PACKAGE_LOCK, where, "not a package under node_modules (local folders and workspaces "
                                             "are refused)")
    if entry.get("link") or entry.get("inBundle"):
        raise _rejected(PACKAGE_LOCK, where, "links and bundled packages are refused")
    if not isinstance(entry.get("version"), str) or not _VERSION.match(entry["version"]):
        raise _rejected(PACKAGE_LOCK, where, "no version of the registry")
    if not isinstance(entry.get("integrity"), str) or not entry["integrity"].startswith(("sha512-", "sha1-")):
        raise _rejected(PACKAGE_LOCK, where, "no integrity hash")
    if "name" in entry and not (isinstance(entry["name"], str) and _NAME.match(entry["name"])):
        raise _rejected(PACKAGE_LOCK, where, "not a package name")
    resolved = entry.get("resolved")
    if resolved is not None and not _from_registry(resolved):
        raise _rejected(PACKAGE_LOCK, f"{where}.resolved", f"{resolved!r} is not a tarball of the registry "
                                                           f"({', '.join(registries())})")
    for field in DEPENDENCY_FIELDS:
        _checked_specs(PACKAGE_LOCK, f"{where}.{field}", entry.get(field))
    return entry


def registries() -> list[str]:
    """The registries a lockfile's `resolved` may name: npm's public one (npm fetches it from its configured
    registry instead) and the operator's DEPENDENCY_NPM_REGISTRY."""
    configured = settings.DEPENDENCY_NPM_REGISTRY
    return [NPM_PUBLIC_REGISTRY] + ([configured.rstrip("/") + "/"] if configured else [])


def _from_registry(url: Any) -> bool:
    return (isinstance(url, str) and url.endswith(".tgz") and not re.search(r"[?#\\\s]|/\.\.?/", url)
            and any(url.startswith(registry) for registry in registries()))


def _root_fields(packages: dict[str, Any]) -> dict[str, Any]:
    root = packages[""]
    return {field: _checked_specs(PACKAGE_LOCK, f"packages[\"\"].{field}", root.get(field))
            for field in DEPENDENCY_FIELDS if root.get(field)}


def _name_of(path: str) -> str:
    return path.rsplit("node_modules/", 1)[-1]


def _rejected(file: str, where: str, problem: str) -> DependenciesRejected:
    return DependenciesRejected(f"{file} {where}: {problem}.", file=file)
