"""Installs downloaded wheels into a dependency layer. It runs inside the build's sandbox container (no network,
read-only root, uid 10001), never on the host; standard library only, because the runtime image has no pip.

Installing a wheel runs none of its code: its files are unpacked (the `purelib` and `platlib` parts of its `.data`
folder at the top; scripts, headers and data are left out, as nothing in a job runs them), then every module is
compiled to bytecode, which runs nothing either. The .pyc files are hash-checked without looking at the sources
("unchecked-hash"), so they stay valid in a layer that is stored, copied and mounted read-only. Then the layer is
written as a gzipped tar (regular files and folders only) to the output folder, with a manifest.

Usage: python3 -I wheel_install.py WHEELS LAYER OUT REQUESTED...   (REQUESTED: the requirements' canonical names)
Exit codes: 0 built; 2 a wheel is malformed or unsafe; 3 the layer is larger than its limit (LAYER, a tmpfs of
that size, is full).
"""
import compileall
import email.parser
import errno
import json
import os
import py_compile
import re
import stat
import sys
import tarfile
import zipfile

EXIT_BAD_WHEEL = 2
EXIT_TOO_LARGE = 3
ARCHIVE = "layer.tar.gz"
MANIFEST = "manifest.json"
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_EXTENSION = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(\.[A-Za-z0-9_-]+)?\.(so|py)$")


class BadWheel(Exception):
    pass


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_wheel(path: str, layer: str) -> tuple[str, str, set[str]]:
    """Unpack the wheel at `path` into `layer`; returns its distribution's name, version and top-level modules."""
    with zipfile.ZipFile(path) as wheel:
        infos = [info for info in wheel.infolist() if not info.is_dir()]
        dist_info = _dist_info(info.filename for info in infos)
        metadata = email.parser.BytesHeaderParser().parsebytes(wheel.read(f"{dist_info}/METADATA"))
        data = dist_info[: -len(".dist-info")] + ".data/"
        tops: set[str] = set()
        for info in infos:
            target = _target(info, data)
            if target is None:
                continue
            _write(wheel, info, os.path.join(layer, target))
            tops.update(_top_module(target))
    return canonical(metadata["Name"] or ""), metadata["Version"] or "", tops


def _dist_info(names) -> str:
    found = {name.split("/", 1)[0] for name in names if name.split("/", 1)[0].endswith(".dist-info")}
    if len(found) != 1:
        raise BadWheel(f"a wheel needs exactly one .dist-info folder, found {sorted(found)}")
    return found.pop()


def _target(info: zipfile.ZipInfo, data: str) -> str | None:
    """Where a member goes in the layer (None: left out); raises BadWheel for a link or an unsafe name."""
    name = info.filename
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or "" in parts or ":" in parts[0]:
        raise BadWheel(f"unsafe path in a wheel: {name!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BadWheel(f"a link in a wheel: {name!r}")
    if not name.startswith(data):
        return name
    kind, _, rest = name[len(data):].partition("/")
    return rest if kind in ("purelib", "platlib") and rest else None


def _write(wheel: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    executable = (info.external_attr >> 16) & 0o111
    with wheel.open(info) as source, open(path, "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
    os.chmod(path, 0o755 if executable else 0o644)


def _top_module(target: str) -> set[str]:
    """The importable top-level name that a file of the layer belongs to, if any (not private, not metadata)."""
    head, _, rest = target.partition("/")
    if rest:
        return {head} if _IDENTIFIER.match(head) and rest == "__init__.py" else set()
    match = _EXTENSION.match(head)
    return {match.group(1)} if match else set()


def write_archive(layer: str, path: str) -> tuple[int, int]:
    """The layer as a gzipped tar at `path` (regular files and folders, owner root, as the layer's own paths);
    returns (files, bytes)."""
    files = size = 0
    with tarfile.open(path, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as archive:
        for parent, dirs, names in os.walk(layer):
            dirs.sort()
            for name in sorted(dirs) + sorted(names):
                full = os.path.join(parent, name)
                info = archive.gettarinfo(full, arcname=os.path.relpath(full, layer))
                if not (info.isfile() or info.isdir()):
                    continue
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with open(full, "rb") as handle:
                        archive.addfile(info, handle)
                    files, size = files + 1, size + info.size
                else:
                    archive.addfile(info)
    return files, size


def refused_when_full(exc: OSError) -> int:
    """EXIT_TOO_LARGE, said on stderr, when `exc` is the layer's tmpfs being full; raises `exc` otherwise."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        print("refused: the installed packages are larger than the layer's size limit (DEPENDENCY_LAYER_MAX_MB)",
              file=sys.stderr)
        return EXIT_TOO_LARGE
    raise exc


def main(argv: list[str]) -> int:
    wheels, layer, out, *requested = argv
    packages: dict[str, str] = {}
    modules: set[str] = set()
    try:
        for name in sorted(os.listdir(wheels)):
            if name.endswith(".whl"):
                dist, version, tops = install_wheel(os.path.join(wheels, name), layer)
                packages[dist] = version
                modules.update(tops if dist in {canonical(r) for r in requested} else ())
                print(f"installed {dist} {version}")
        compileall.compile_dir(layer, quiet=2, workers=1,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        files, size = write_archive(layer, os.path.join(out, ARCHIVE))
    except (BadWheel, zipfile.BadZipFile, KeyError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_BAD_WHEEL
    except OSError as exc:
        return refused_when_full(exc)
    with open(os.path.join(out, MANIFEST), "w") as manifest:
        json.dump({"packages": packages, "modules": sorted(modules), "files": files, "size_bytes": size}, manifest)
    print(f"layer: {len(packages)} packages, {files} files, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
