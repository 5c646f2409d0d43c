"""The per-job gateway: an HTTP server on a Unix socket, the job container's only door to the outside.

The worker starts one for each job and mounts its folder into the container. It serves:
- the model APIs (Ollama's and OpenAI's, whatever the node's kind), forwarding only the models the job may use to
  the node each is routed to, capping each call's output to the job's budget, and writing one ledger row per call
  with the token counts taken from the node's own answer (or, where the node did not report them, counted by the
  gateway and marked estimated);
- `/_job/usage` (the running totals) and `/_job/result` (the runtime's report of the script's end).
Everything a request body may hold is bounded, node management is refused, and an unknown route gets 404, so a
hostile script reaches nothing else and cannot change what it is billed. Its resources are bounded too: the
connections it may hold open, how long a connection may stay silent, and the calls in flight (a call's slot is
taken before its body is read, so waiting requests hold no memory).

A call lives only as long as someone wants its answer: when the script hangs up, or the job's container ends, the
node's answer is cancelled (the gateway closes its connection to the node) and the call is billed for what the
node generated until then; requests not yet forwarded are dropped unstarted.
"""
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodeclient import Cancellation, Completion, NodeClient, NodeError, Usage, client_for

from ..fairness.call_slots import UNLIMITED, CallSlots, Slot, SlotWaitEnded
from ..models import LLMCallStatus
from ..sandbox.result_channel import RESULT_ROUTE, ResultChannel, ResultReport
from . import wire
from .ledger import CallTrace, LedgerWriter, record_call
from .meter import BudgetExhausted, Meter, Reservation, WaitAbandoned, prompt_bound
from .reconcile import recount_record
from .relay import Outcome, relay
from .receipts import request_digest
from .transport import GatewayRequestError, Request, SocketServer

logger = logging.getLogger(__name__)

SOCKET_NAME = "gateway.sock"
PROMPT_COUNT_CACHE = 256  # prompts whose token count a gateway remembers (a script often repeats its prompt)

@dataclass(frozen=True)
class ModelRoute:
    """Where one model the job may call is served."""

    model_id: str
    node: str
    kind: str
    url: str


@dataclass
class GatewayConfig:
    job_id: str
    default_model: str
    routes: dict[str, ModelRoute] = field(default_factory=dict)
    budget: int | None = None
    max_output_tokens: int = 2048
    call_timeout: float = 120.0
    max_body_bytes: int = 1024 * 1024
    max_concurrent_calls: int = 4
    max_connections: int = 32
    socket_timeout: float = 30.0
    drain_timeout: float = 5.0
    # How long a call whose node refuses connections (it is restarting) is tried again before it fails.
    node_wait: float = 20.0
    result_limit: int = 1024 * 1024
    # Told of each model call's start and end and of the running totals after it: (kind, data), kinds `llm_call`
    # and `usage` (see jobs.events). Called on the request's thread: it must return at once.
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    # The slots of the nodes that limit their calls at once (jobs.fairness.call_slots); None: no node does.
    call_slots: CallSlots | None = None


def _status_for(error: NodeError) -> int:
    """The status a script gets for a node's failure. A node that refused the request itself (4xx: a prompt longer
    than its context, say) answers 400, which clients do not retry: the same call would only be refused, and
    billed as an unknown call, again. Everything else is the node's trouble (502), worth a retry."""
    if error.code == "model_not_found":
        return 404
    if error.status is not None and 400 <= error.status < 500 and error.status != 429:
        return 400
    return 502


class JobGateway:
    """Serves one job (the transport's `App`). `start()` binds the socket; `stop()` ends the job's calls and closes
    it; `report` holds the result the runtime posted on the result channel."""

    def __init__(self, config: GatewayConfig, *, socket_dir: str):
        self.config = config
        self.job_id = config.job_id
        self.socket_path = os.path.join(socket_dir, SOCKET_NAME)
        self.results = ResultChannel(result_limit=config.result_limit)
        self.max_connections = config.max_connections
        self.socket_timeout = config.socket_timeout
        self.max_body_bytes = config.max_body_bytes
        self.meter = Meter(budget=config.budget, max_output_tokens=config.max_output_tokens)
        self.closing = False
        self._lock = threading.Lock()
        self._slots = threading.Condition()
        self._slots_used = 0
        self._in_flight: set[Cancellation] = set()
        # One client per node route for the gateway's life: they remember what a node serves between calls, and
        # keep their connections to it alive (one per call slot), so that a call does not wait for a new one.
        self._clients: dict[str, NodeClient] = {
            model: client_for(route.kind, route.url, config.call_timeout, keep_alive=config.max_concurrent_calls)
            for model, route in config.routes.items()
        }
        self._prompt_counts: dict[tuple, int] = {}
        self._ledger = LedgerWriter(config.job_id)
        self._events_lock = threading.Lock()
        self._call_numbers = itertools.count(1)
        self.routes = {
            RESULT_ROUTE: self.results.post,
            ("GET", "/_job/usage"): lambda request: (200, self.meter.snapshot()),
            ("GET", "/api/tags"): lambda request: (200, wire.ollama_tags(sorted(config.routes))),
            ("GET", "/v1/models"): lambda request: (200, wire.openai_models(sorted(config.routes))),
            ("GET", "/api/version"): lambda request: (200, {"version": "0.0.0-infra-ainode-gateway"}),
        }
        for path in wire.ROUTES:
            self.routes[("POST", path)] = self._model_call
        self._server: SocketServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def report(self) -> ResultReport:
        return self.results.report

    def route(self, method: str, path: str) -> Callable[[Request], tuple[int, Any] | None]:
        """The handler of `method path`. Node management is refused whatever the method (Ollama deletes a model with
        DELETE /api/delete and pushes blobs with HEAD/POST); anything else unknown is 404."""
        if path in wire.FORBIDDEN_ROUTES or path.startswith("/api/blobs/"):
            raise GatewayRequestError(403, "route_forbidden", f"{path} is not available to jobs.")
        handler = self.routes.get((method, path))
        if handler is None:
            raise GatewayRequestError(404, "not_found", f"No route {method} {path}.")
        return handler

    def start(self) -> "JobGateway":
        self._server = SocketServer(self.socket_path, Request)
        self._server.app = self
        # The container runs as an unprivileged user that must be able to connect.
        os.chmod(self.socket_path, 0o666)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"gateway-{self.job_id}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, drain_timeout: float | None = None) -> None:
        """End the job's traffic and close; call it once the job's container has ended. Idempotent.

        New connections are refused; requests not yet forwarded to a node are dropped unstarted; calls in flight
        are cancelled at their node (their connection is closed) and put on the ledger with what the node
        generated until then. Waits at most `drain_timeout` (default `config.drain_timeout`) seconds for all that,
        and as long again for the ledger rows of the calls, so that the ledger is complete before the job's totals
        are taken from it.
        """
        server = self._server
        if server is not None:
            with self._lock:
                self.closing = True
                in_flight = list(self._in_flight)
            server.shutdown()  # no more accepts
            with self._slots:
                self._slots.notify_all()  # requests waiting for a call slot see `closing` and give up
            for cancellation in in_flight:
                cancellation.cancel("the job ended")
            server.hang_up_all()
            timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
            with server.idle:
                if not server.idle.wait_for(lambda: server.active == 0, timeout):
                    logger.warning("job %s: %d gateway requests still running after %.0f s; they are recorded "
                                   "when they end", self.job_id, server.active, timeout)
            server.server_close()
            self._server = None
            # The calls that ended are settled; their rows may still be queued. A second wait, as long as the first,
            # bounds a database that does not answer; normally it takes a few milliseconds.
            self._ledger.close(timeout)
        for client in self._clients.values():
            client.close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    # --- model calls -------------------------------------------------------------------------------------------

    def _model_call(self, request: Request) -> tuple[int, Any] | None:
        # The slot is taken before the body is read: requests waiting for one hold a thread but no memory.
        with self._call_slot():
            call = self._parse(request)
            route = self.config.routes.get(call.model)
            if route is None:
                raise GatewayRequestError(
                    403, "model_not_allowed",
                    f"This job may not use model {call.model[:200]!r}; allowed: "
                    f"{', '.join(sorted(self.config.routes))}.",
                )
            client = self._clients[call.model]
            call.model = route.model_id  # an alias the function allowed is forwarded (and billed) as its target
            return self._metered_call(request, call, route, client)

    @contextmanager
    def _call_slot(self) -> Iterator[None]:
        """Hold one of the job's call slots: bounding the calls in flight keeps one script from flooding the node
        (and from holding many reservations)."""
        deadline = time.monotonic() + self.config.call_timeout
        with self._slots:
            while self._slots_used >= self.config.max_concurrent_calls and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GatewayRequestError(429, "too_many_calls", "Too many model calls in flight for this job.")
                self._slots.wait(min(left, 0.5))
            if self.closing:
                raise GatewayRequestError(503, "job_ended", "The job has ended.")
            self._slots_used += 1
        try:
            yield
        finally:
            with self._slots:
                self._slots_used -= 1
                self._slots.notify()

    def _parse(self, request: Request) -> wire.LLMRequest:
        body = request.read_json(self.config.max_body_bytes)
        try:
            return wire.parse_request(request.route_path, body, default_model=self.config.default_model)
        except wire.WireError as exc:
            raise GatewayRequestError(400, exc.code, str(exc)) from None
        except (TypeError, AttributeError, RecursionError):  # a shape the parser did not foresee
            raise GatewayRequestError(400, "invalid_request", "The request's fields have the wrong types.") from None

    def _metered_call(self, request: Request, call: wire.LLMRequest, route: ModelRoute,
                      client: NodeClient) -> tuple[int, Any] | None:
        """Reserve budget, forward the call, answer, and put the call on the ledger whatever happened."""
        reservation = self._reserve(request, call, client)
        cancellation = Cancellation()
        with self._lock:
            dropped = self.closing or request.peer_gone()
            if not dropped:
                self._in_flight.add(cancellation)
        if dropped:  # nobody waits for the answer any more: the call is never started, and not billed
            self.meter.release(reservation)
            raise GatewayRequestError(503, "call_dropped", "The job ended or the script hung up.")
        try:
            slot = self._node_slot(request, route, reservation)
        except GatewayRequestError:  # it never started: not billed
            with self._lock:
                self._in_flight.discard(cancellation)
            self.meter.release(reservation)
            raise
        options = {**call.options, "max_tokens": reservation.max_tokens}
        number = next(self._call_numbers)
        described = {"call": number, "model": call.model, "streamed": call.stream, "endpoint": request.route_path}
        self._tell("llm_call", {"phase": "start", **described, "maxTokens": reservation.max_tokens,
                                **({"slotWaitMs": slot.waited_ms} if slot is not UNLIMITED else {})})
        frames = wire.StreamRenderer(call) if call.stream else None
        started, started_at = time.monotonic(), datetime.now(UTC)
        outcome = Outcome()
        try:
            relay(request, call, client, options, cancellation, frames, outcome, call_timeout=self.config.call_timeout,
                  node_wait=self.config.node_wait, ended=lambda: self.closing, job_id=self.job_id)
        except Exception:  # a fault of ours: the call still settles, so its reservation is not held for ever
            logger.exception("job %s: relaying a %s call failed", self.job_id, call.model)
            outcome.error = NodeError("node_bad_response", "The gateway could not relay the node's answer.")
        finally:
            with self._lock:
                self._in_flight.discard(cancellation)
        usage = None
        try:
            usage, estimated, recount = self._usage_of(client, call, reservation, outcome, cancellation)
        finally:
            slot.release(prompt_tokens=(usage and usage.prompt_tokens) or 0,
                         completion_tokens=(usage and usage.completion_tokens) or 0)
        self.meter.settle(reservation, usage, estimated=estimated)
        completion, error = outcome.completion, outcome.error
        endpoint, duration_ms = request.route_path, round((time.monotonic() - started) * 1000)
        # Told before the answer goes out, so that a watcher sees the call end before whatever the script does
        # next; the counts are those the ledger row will hold.
        self._tell_call_end(described, usage=usage, estimated=estimated, completion=completion, error=error,
                            duration_ms=duration_ms)
        # The row is written on the ledger's thread, off the answer's path (`stop` waits for it), and queued once the
        # answer is out: that thread's Python would otherwise hold the interpreter lock while the answer is written.
        ended_at = datetime.now(UTC)
        delivered = completion.text if completion is not None else "".join(outcome.pieces)
        request.after_answer.append(lambda: self._ledger.write(lambda: self._record(
            call, endpoint, route, reservation, usage, estimated, recount, completion, error, duration_ms,
            number=number, options=options, trace=(started_at, ended_at, delivered))))
        if frames is not None and request.stream_started:
            # A stream's last frame goes out once the call is settled: a script that reads it and then asks
            # usage() must find the call counted.
            if request.listening:
                request.write_frame(frames.final(completion) if completion is not None
                                    else frames.error(error.code, error.public_message))
            return None
        if error is not None:
            return _status_for(error), {"error": error.public_message, "code": error.code}
        return 200, wire.render(call, completion)

    def _node_slot(self, request: Request, route: ModelRoute, reservation: Reservation) -> Slot:
        """One of the call slots of `route`'s node, when the node limits its calls at once: waits (at most the call
        timeout) for this call's turn in fair-share order."""
        if self.config.call_slots is None:
            return UNLIMITED
        try:
            return self.config.call_slots.take(route.node, prompt_tokens=reservation.prompt_tokens,
                                               wait=self.config.call_timeout,
                                               abandon=lambda: self.closing or request.peer_gone())
        except SlotWaitEnded as exc:
            raise GatewayRequestError(503, exc.code, str(exc)) from None

    def _reserve(self, request: Request, call: wire.LLMRequest, client: NodeClient) -> Reservation:
        """Hold room in the budget for the call: its prompt's exact count where the node can tokenize (only asked
        when the job has a budget), else a bound. Waits (at most the call timeout) for calls in flight to settle."""
        exact = self._prompt_count(client, call) if self.meter.budget is not None else None
        try:
            return self.meter.reserve(
                prompt_tokens=exact if exact is not None else prompt_bound(call.prompt_texts()),
                prompt_exact=exact is not None, requested=call.options.get("max_tokens"),
                wait=self.config.call_timeout, abandon=lambda: self.closing or request.peer_gone(),
            )
        except BudgetExhausted as exc:
            raise GatewayRequestError(402, "budget_exhausted", str(exc)) from None
        except WaitAbandoned:
            raise GatewayRequestError(503, "call_dropped", "The job ended or the script hung up.") from None

    def _prompt_count(self, client: NodeClient, call: wire.LLMRequest) -> int | None:
        if call.op == wire.GENERATE:
            key: tuple = (call.model, call.op, call.raw, call.system, call.prompt)
        else:
            key = (call.model, call.op, json.dumps(call.messages))
        with self._lock:
            if key in self._prompt_counts:
                return self._prompt_counts[key]
        if call.op == wire.GENERATE:
            count = client.count_prompt_tokens(call.model, prompt=call.prompt, system=call.system, raw=call.raw)
        else:
            count = client.count_prompt_tokens(call.model, messages=call.messages)
        if count is not None:
            with self._lock:
                if len(self._prompt_counts) >= PROMPT_COUNT_CACHE:
                    self._prompt_counts.clear()
                self._prompt_counts[key] = count
        return count

    def _usage_of(self, client: NodeClient, call: wire.LLMRequest, reservation: Reservation,
                  outcome: Outcome, cancellation: Cancellation) -> tuple[Usage | None, bool, dict | None]:
        """The call's tokens, whether the gateway counted them, and what to count them from again when they are
        not exact yet (see jobs.metering.reconcile). The node's counts where it reported them.

        Where it did not, the gateway counts (see docs/metering.md): the prompt with the node's tokenizer (else a
        bound from its length), and what was generated with the node's tokenizer over the text the gateway saw,
        else the number of streamed pieces (the node streams one token per piece), never more than the call was
        granted. A call cut off before its first token (the script hung up, the job ended, the call ran out of
        time) after it reached the node is billed its prompt: the node had started on it. None (unknown) only
        when the node itself failed before generating anything.
        """
        reported = outcome.completion.usage if outcome.completion is not None else None
        if reported is not None and reported.known:
            return reported, False, None
        if outcome.completion is None and not outcome.pieces and not (
                cancellation.cancelled and cancellation.reached_node):
            return None, False, None
        text = outcome.completion.text if outcome.completion is not None else "".join(outcome.pieces)
        exact = True
        prompt = reported.prompt_tokens if reported is not None else None
        if prompt is None:
            prompt = reservation.prompt_tokens if reservation.prompt_exact else self._prompt_count(client, call)
        if prompt is None:
            prompt, exact = prompt_bound(call.prompt_texts()), False
        generated = reported.completion_tokens if reported is not None else None
        if generated is None:
            counted = client.count_text_tokens(call.model, text) if text else 0
            exact = exact and counted is not None
            generated = min(reservation.max_tokens, len(outcome.pieces) if counted is None else counted)
        return Usage(prompt, generated), True, None if exact else recount_record(call, text)

    def _record(self, call: wire.LLMRequest, endpoint: str, route: ModelRoute, reservation: Reservation,
                usage: Usage | None, estimated: bool, recount: dict | None, completion: Completion | None,
                error: NodeError | None, duration_ms: int, *, number: int, options: dict[str, Any],
                trace: tuple[datetime, datetime, str]) -> None:
        """Put the call on the ledger with its receipt (on the ledger's thread: the digests are made here too, off
        the answer's path), then tell the live events the receipt's hash."""
        started_at, ended_at, delivered = trace
        digests = CallTrace(
            started_at=started_at, ended_at=ended_at, delivered_sha256=hashlib.sha256(delivered.encode()).hexdigest(),
            request_sha256=request_digest(model=call.model, op=call.op, prompt=call.prompt, system=call.system,
                                          raw=call.raw, messages=call.messages, options=options))
        try:
            row = record_call(
                job_id=self.job_id, model_id=call.model, node=route.node, endpoint=endpoint,
                streamed=call.stream, usage=usage, estimated=estimated, recount=recount,
                max_tokens=reservation.max_tokens,
                done_reason=completion.done_reason if completion else None, duration_ms=duration_ms,
                node_duration_ms=completion.total_duration_ms if completion else None,
                error_code=error.code if error else "", error_message=str(error) if error else "", trace=digests,
            )
        except Exception:
            # The meter has counted the call already; the job's totals are recomputed from the ledger at its end.
            logger.exception("job %s: could not record a %s call on the ledger", self.job_id, call.model)
            return
        self._tell("llm_call", {"phase": "receipt", "call": number, "seq": row.receipt.seq,
                                "receiptHash": row.receipt.hash})

    def _tell(self, kind: str, data: dict[str, Any]) -> None:
        if self.config.on_event is None:
            return
        try:
            self.config.on_event(kind, data)
        except Exception:  # events are for watching; they never fail a call
            logger.warning("job %s: event callback failed", self.job_id, exc_info=True)

    def _tell_call_end(self, described: dict[str, Any], *, usage: Usage | None, estimated: bool,
                       completion: Completion | None, error: NodeError | None, duration_ms: int) -> None:
        """The call's end as the ledger records it, then the totals. One at a time: the last `usage` event of
        the job is then always the latest totals, whatever order concurrent calls end in."""
        with self._events_lock:
            self._tell("llm_call", {
                "phase": "end", **described, "status": LLMCallStatus.ERROR if error else LLMCallStatus.OK,
                "errorCode": error.code if error else "",
                "promptTokens": usage.prompt_tokens if usage else None,
                "completionTokens": usage.completion_tokens if usage else None,
                "estimated": estimated, "doneReason": (completion.done_reason if completion else None) or "",
                "durationMs": duration_ms,
            })
            self._tell("usage", self.meter.snapshot())
