"""A reader for the metadata in a GGUF file's header (the file format llama.cpp loads models from).

A tiny reader instead of the `gguf` package: llama.cpp's server does not report the model's architecture, and
that is all the Ollama front needs from the file.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value type -> struct format, for the fixed-size types (8 = string, 9 = array are handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_metadata(path: Path, keys: set[str]) -> dict[str, Any]:
    """Read the wanted metadata keys from a GGUF header, stopping as soon as all are found.

    Keys the file does not hold are absent from the result; arrays are skipped and read as None.
    Raises ValueError for a file that is not GGUF.
    """
    found: dict[str, Any] = {}
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        for _ in range(n_kv):
            key = _string(f)
            value = _value(f, struct.unpack("<I", f.read(4))[0])
            if key in keys:
                found[key] = value
                if len(found) == len(keys):
                    break
    return found


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8", errors="replace")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        item_type, count = struct.unpack("<IQ", f.read(12))
        if item_type in _SCALARS:  # skip numeric arrays without decoding them
            f.seek(count * struct.calcsize(_SCALARS[item_type]), 1)
        else:
            for _ in range(count):
                _value(f, item_type)
        return None
    fmt = _SCALARS[vtype]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
