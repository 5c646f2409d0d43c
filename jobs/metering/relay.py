"""Forwarding one model call to its node and relaying the answer to the script (the gateway's, jobs.metering.gateway).

The node is always asked for a stream, so that the gateway knows what it generated even when the call does not end
well; a streamed call is relayed piece by piece, a whole one gathered. The call is cancelled at the node as soon as
the script hangs up, and a whole call (whose script waits with nothing) once it runs past the call timeout. A call
whose node refuses connections (a node that is restarting, say) is tried again within `node_wait` seconds: only one
that never reached its node, so that nothing was asked of the node, generated or owed.
"""
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.backoff import Backoff
from nodeclient import Cancellation, Completion, NodeClient, NodeError

from . import wire
from .transport import Request

logger = logging.getLogger(__name__)

# Pauses between tries of a call whose node could not be reached.
NODE_RETRY_FIRST_PAUSE = 0.5
NODE_RETRY_MAX_PAUSE = 2.0


@dataclass
class Outcome:
    """What a forwarded call came to: the node's final answer, or an error and the text generated before it."""

    pieces: list[str] = field(default_factory=list)
    completion: Completion | None = None
    error: NodeError | None = None
    timed_out: bool = False


def relay(request: Request, call: wire.LLMRequest, client: NodeClient, options: dict[str, Any],
          cancellation: Cancellation, frames: "wire.StreamRenderer | None", outcome: Outcome, *, call_timeout: float,
          node_wait: float, ended: Callable[[], bool], job_id: str) -> None:
    """Forward `call` and relay its answer into `outcome` (and, for a stream, `frames` to the script); `ended()`
    says whether the job has ended."""
    if frames is not None:
        request.close_connection = True
    deadline = time.monotonic() + call_timeout
    backoff = Backoff(node_wait, first=NODE_RETRY_FIRST_PAUSE, most=NODE_RETRY_MAX_PAUSE)
    while True:
        _forward(request, call, client, options, cancellation, frames, outcome, deadline, call_timeout)
        if not _may_try_again(outcome, cancellation, request, ended, not backoff.allows()):
            return
        logger.warning("job %s: the node of %s could not be reached; trying again in %.1f s", job_id, call.model,
                       backoff.pause)
        if not backoff.wait(lambda seconds: _pause(seconds, cancellation, request, ended)):
            return
        outcome.error = None


def _forward(request: Request, call: wire.LLMRequest, client: NodeClient, options: dict[str, Any],
             cancellation: Cancellation, frames: "wire.StreamRenderer | None", outcome: Outcome, deadline: float,
             call_timeout: float) -> None:
    events = (client.stream_generate(call.model, call.prompt, system=call.system, raw=call.raw,
                                     cancel=cancellation, **options)
              if call.op == wire.GENERATE else
              client.stream_chat(call.model, call.messages, cancel=cancellation, **options))
    try:
        for event in events:
            if isinstance(event, Completion):
                outcome.completion = event
                return
            outcome.pieces.append(event)
            if frames is not None:
                if request.listening and not request.stream_started:
                    request.listening = request.start_stream(frames.content_type)
                if request.listening:
                    request.listening = request.write_frame(frames.chunk(event))
            if request.peer_gone():
                cancellation.cancel("the script hung up")
            elif frames is None and time.monotonic() > deadline:
                outcome.timed_out = True
                cancellation.cancel(f"it ran past the call timeout ({call_timeout:g} s)")
        outcome.error = NodeError("node_bad_response", "The node's stream ended without its final event.")
    except NodeError as exc:
        outcome.error = exc
        if outcome.timed_out:
            outcome.error = NodeError("node_timeout", f"The call ran past {call_timeout:g} s.")
    finally:
        events.close()


def _may_try_again(outcome: Outcome, cancellation: Cancellation, request: Request, ended: Callable[[], bool],
                   past_wait: bool) -> bool:
    """Whether a call that failed is tried again: one refused at connect (it never reached its node), while the job
    and its script still wait for it, within the wait."""
    error = outcome.error
    return (error is not None and error.code == "node_unreachable" and not cancellation.reached_node
            and not outcome.pieces and outcome.completion is None and not past_wait
            and not (ended() or request.peer_gone() or cancellation.cancelled))


def _pause(seconds: float, cancellation: Cancellation, request: Request, ended: Callable[[], bool]) -> bool:
    """Sleep `seconds`, in slices; False as soon as the job ends, the script hangs up or the call is cancelled."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if ended() or request.peer_gone() or cancellation.cancelled:
            return False
        time.sleep(min(0.1, until - time.monotonic()))
    return True
