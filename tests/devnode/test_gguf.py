"""The development node reads the model's architecture from the GGUF file's header (llama.cpp does not say it)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from devnode import gguf


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _gguf_file(path: Path, entries: list[tuple[str, int, bytes]]) -> Path:
    """A GGUF header (version 3, no tensors) holding these (key, value type, encoded value) entries."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries))
    body = b"".join(_string(key) + struct.pack("<I", vtype) + value for key, vtype, value in entries)
    path.write_bytes(header + body)
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return _gguf_file(tmp_path / "model.gguf", [
        ("general.name", 8, _string("tiny")),
        ("tokenizer.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0.5, 1.5, 2.5)),  # floats
        ("tokenizer.tokens", 9, struct.pack("<IQ", 8, 2) + _string("<s>") + _string("</s>")),  # strings
        ("llama.context_length", 4, struct.pack("<I", 8192)),
        ("general.architecture", 8, _string("llama")),
        ("general.is_tiny", 7, struct.pack("<?", True)),
    ])


def test_it_reads_the_keys_it_is_asked_for_past_arrays_of_numbers_and_strings(model_file: Path) -> None:
    found = gguf.read_metadata(model_file, {"general.architecture", "llama.context_length", "general.is_tiny"})
    assert found == {"general.architecture": "llama", "llama.context_length": 8192, "general.is_tiny": True}


def test_a_key_the_file_lacks_is_absent_and_an_array_reads_as_none(model_file: Path) -> None:
    assert gguf.read_metadata(model_file, {"general.name", "tokenizer.tokens", "no.such.key"}) == {
        "general.name": "tiny", "tokenizer.tokens": None}


def test_it_refuses_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    other = tmp_path / "model.bin"
    other.write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf.read_metadata(other, {"general.architecture"})
