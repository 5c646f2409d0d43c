"""The one error of a node client: every failure of a call to an AI node becomes a `NodeError`."""

from __future__ import annotations

import re


class NodeError(Exception):
    """A call to an AI node failed.

    `code` is one of: node_unreachable, node_timeout, node_bad_response, node_http_error, model_not_found,
    call_cancelled. `status` is the HTTP status when the node answered with one. `str()` names the node's address
    (for logs and the ledger); `public_message` does not (for whoever made the call).
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"

    @property
    def public_message(self) -> str:
        """The message with every URL and host:port in it replaced by "the AI node"."""
        return f"{self.code}: {_ADDRESS.sub('the AI node', str(self.args[0]))}"


# URLs, and bare host:port pairs (an IP, "localhost" or a dotted name followed by a port).
_ADDRESS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+|\b(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|"
                      r"[a-z0-9-]+(?:\.[a-z0-9-]+)+)(?::\d{1,5})\b", re.IGNORECASE)

