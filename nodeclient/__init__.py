"""Clients for AI nodes: the only code that speaks HTTP to them.

Two kinds of node sit behind one interface, `NodeClient`:

- `OllamaClient`: an Ollama server (`/api/tags`, `/api/ps`, `/api/generate`, `/api/chat`, NDJSON streaming).
- `OpenAIClient`: any OpenAI-compatible server such as llama.cpp's or vLLM's (`/v1/models`,
  `/v1/chat/completions`, `/v1/completions`, SSE streaming with `stream_options.include_usage`).

`client_for(kind, url, timeout)` picks one. Callers import from the package itself (`from nodeclient import
NodeError`); the modules are split by concern:

- `options`: the one table of model options, `OLLAMA_TO_OPENAI_OPTIONS`, that the gateway's wire translation and
  devnode's Ollama front read as well, and the check of a caller's options.
- `errors`: `NodeError`. `connections`: `Cancellation` and the kept-alive connections.
- `base`: the data types of an answer (`NodeModel`, `Usage`, `Completion`) and `NodeClient` with the HTTP plumbing
  both kinds share.
- `ollama`, `openai`: the two clients.

Token counts come from the node's own answer (`Usage`): they are what the operator bills. Where a node did not
report them (it died half way, or a call was cancelled), `count_prompt_tokens` and `count_text_tokens` ask the
node's own tokenizer when it has one (llama.cpp and vLLM serve POST /tokenize); they answer None otherwise.
A call in flight can be stopped from another thread with a `Cancellation`: it shuts the call's connection, which
the node sees as its client hanging up (llama.cpp and Ollama then stop generating).
A client made with `keep_alive` keeps that many idle connections to its node between calls (HTTP/1.1 keep-alive),
so that a call skips the TCP handshake and the node's accept; `close()` closes them. Only an answer read to its end
leaves its connection for the next call; a cancelled or broken one is closed.
Every failure is a `NodeError` with a stable `.code`; no library exception leaks out.
Standard library only, and nothing from Django: callers pass the URL and timeout. So the development AI node
(devnode/) may import it too.
"""

from __future__ import annotations

from nodeclient.base import Completion, NodeClient, NodeModel, Usage, format_parameter_size
from nodeclient.connections import Cancellation
from nodeclient.errors import NodeError
from nodeclient.ollama import OllamaClient
from nodeclient.openai import OpenAIClient
from nodeclient.options import COMMON_OPTIONS, OLLAMA_TO_OPENAI_OPTIONS

__all__ = [
    "COMMON_OPTIONS",
    "OLLAMA_TO_OPENAI_OPTIONS",
    "Cancellation",
    "Completion",
    "NodeClient",
    "NodeError",
    "NodeModel",
    "OllamaClient",
    "OpenAIClient",
    "Usage",
    "client_for",
    "format_parameter_size",
]

_CLIENTS: dict[str, type[NodeClient]] = {"ollama": OllamaClient, "openai": OpenAIClient}


def client_for(kind: str, url: str, timeout: float, *, keep_alive: int = 0) -> NodeClient:
    """The client for a node of this kind ("ollama" or "openai"), keeping up to `keep_alive` idle connections to it
    (close them with `close()`); ValueError for another kind."""
    try:
        client_class = _CLIENTS[kind]
    except KeyError:
        raise ValueError(f"unknown AI node kind {kind!r}; expected one of {sorted(_CLIENTS)}") from None
    return client_class(url, timeout, keep_alive=keep_alive)
