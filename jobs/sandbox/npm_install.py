"""Copies a node layer's packages, fetched by the host's `npm ci --ignore-scripts`, into the layer. It runs inside
the build's sandbox container (no network, read-only root, uid 10001), never on the host; standard library only,
beside wheel_install.py, whose archive writer it shares.

Copying runs none of a package's code. A package that needs code run to install (a `preinstall`, `install` or
`postinstall` script, or a `binding.gyp`, which npm builds with node-gyp) is refused, naming it: npm did not run it
(--ignore-scripts), so the package would be incomplete. The lockfile's `hasInstallScript` was checked before the
fetch; this looks at what was really fetched, as a lockfile may be edited by hand. Links are refused.

Usage: python3 -I npm_install.py NODE_MODULES LAYER OUT REQUESTED...   (REQUESTED: package.json's dependencies)
Exit codes: 0 built; 2 a package is unsafe (a link); 3 the layer is larger than its limit; 4 a package needs an
install script.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wheel_install import ARCHIVE, EXIT_BAD_WHEEL, MANIFEST, refused_when_full, write_archive  # noqa: E402

EXIT_INSTALL_SCRIPT = 4
INSTALL_SCRIPTS = ("preinstall", "install", "postinstall")


class Refused(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def install_script(folder: str) -> str | None:
    """What install step the package in `folder` declares (a script's name, or binding.gyp); None without one."""
    try:
        with open(os.path.join(folder, "package.json"), "rb") as handle:
            manifest = json.loads(handle.read(1 << 20))
    except (OSError, ValueError):
        return None
    scripts = manifest.get("scripts") if isinstance(manifest, dict) else None
    for name in INSTALL_SCRIPTS:
        if isinstance(scripts, dict) and scripts.get(name):
            return name
    if manifest.get("gypfile") is True or os.path.isfile(os.path.join(folder, "binding.gyp")):
        return "binding.gyp"
    return None


def package_of(folder: str) -> tuple[str, str]:
    with open(os.path.join(folder, "package.json"), "rb") as handle:
        manifest = json.loads(handle.read(1 << 20))
    return str(manifest.get("name", os.path.basename(folder))), str(manifest.get("version", ""))


def copy_packages(source: str, layer: str) -> dict[str, str]:
    """Copy `source` (a node_modules folder) to `layer`/node_modules; returns the packages found, name: version.
    Raises Refused for a link or a package with an install step."""
    packages: dict[str, str] = {}
    target_root = os.path.join(layer, "node_modules")
    for parent, dirs, names in os.walk(source):
        dirs.sort()
        relative = os.path.relpath(parent, source)
        target = os.path.normpath(os.path.join(target_root, relative))
        os.makedirs(target, exist_ok=True)
        if "package.json" in names and _is_package(relative):
            step = install_script(parent)
            name, version = package_of(parent)
            if step:
                raise Refused(f"{name}@{version} needs an install script ({step}), which is never run; "
                              f"choose a package that installs without one", EXIT_INSTALL_SCRIPT)
            packages.setdefault(name, version)
        for name in dirs + names:
            if os.path.islink(os.path.join(parent, name)):
                raise Refused(f"a link among the packages: {os.path.join(relative, name)!r}", EXIT_BAD_WHEEL)
        for name in sorted(names):
            shutil.copyfile(os.path.join(parent, name), os.path.join(target, name), follow_symlinks=False)
    return packages


def _is_package(relative: str) -> bool:
    """Whether a folder of node_modules (relative to it) is a package: `name`, `@scope/name`, nested alike."""
    parts = ["node_modules", *relative.split(os.sep)] if relative != "." else ["node_modules"]
    if len(parts) >= 2 and parts[-2] == "node_modules":
        return not parts[-1].startswith(("@", "."))
    return len(parts) >= 3 and parts[-3] == "node_modules" and parts[-2].startswith("@")


def main(argv: list[str]) -> int:
    source, layer, out, *requested = argv
    try:
        packages = copy_packages(source, layer)
        files, size = write_archive(layer, os.path.join(out, ARCHIVE))
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        return refused_when_full(exc)
    for name, version in sorted(packages.items()):
        print(f"installed {name} {version}")
    with open(os.path.join(out, MANIFEST), "w") as manifest:
        modules = sorted(name for name in requested if name in packages)
        json.dump({"packages": packages, "modules": modules, "files": files, "size_bytes": size}, manifest)
    print(f"layer: {len(packages)} packages, {files} files, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
