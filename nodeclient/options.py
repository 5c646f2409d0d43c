"""The one table of model options, `OLLAMA_TO_OPENAI_OPTIONS`, and the check every client makes of a caller's options.

The gateway's wire translation and devnode's Ollama front read the table as well. Only the SDK keeps a copy of its
own: the job container has the standard library and the SDK, nothing of ours.
"""

from __future__ import annotations

from typing import Any

# The model options the platform passes on: Ollama's name -> OpenAI's. The OpenAI names are the ones callers of
# these clients use, whatever the node's kind; each client maps them to its own API.
OLLAMA_TO_OPENAI_OPTIONS: dict[str, str] = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "seed": "seed",
    "top_p": "top_p",
    "top_k": "top_k",
    "stop": "stop",
}
COMMON_OPTIONS = frozenset(OLLAMA_TO_OPENAI_OPTIONS.values())
OPENAI_TO_OLLAMA_OPTIONS = {openai: ollama for ollama, openai in OLLAMA_TO_OPENAI_OPTIONS.items()}


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options that are set (not None); ValueError when one is not in `COMMON_OPTIONS`."""
    unknown = set(options) - COMMON_OPTIONS
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; allowed: {sorted(COMMON_OPTIONS)}")
    return {k: v for k, v in options.items() if v is not None}
