"""What a job's gateway may reach: the routes chosen when the job was admitted (jobs.services.submit_job), turned
into the nodes' addresses. A job is routed once; a node that has gone or been disabled since then is an error of
its own (`node_unavailable`), not a second routing."""
from collections.abc import Callable
from typing import Any

from django.conf import settings

from core.errors import DomainError
from models_catalog.services import node_named

from ..models import Job
from ..fairness.call_slots import CallSlots
from .gateway import GatewayConfig, ModelRoute


class NodeUnavailable(DomainError):
    code = "node_unavailable"
    status = 503


def gateway_config(job: Job, *, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> GatewayConfig:
    """The job's model on the node it was routed to, and the function's other allowed models on theirs. Raises
    NodeUnavailable when the job's own node is gone or disabled; another model whose node is gone is left out (the
    gateway refuses calls to it as model_not_allowed)."""
    own = node_named(job.node)
    if own is None:
        raise NodeUnavailable(f"The node {job.node!r} that serves {job.model_id} is gone or disabled.")
    routes = {job.model_id: ModelRoute(job.model_id, own.name, own.kind, own.url)}
    limits = {own.name: own.max_concurrent_calls}
    for name, (model_id, node_name) in (job.routes or {}).items():
        node = node_named(node_name)
        if node is not None and name not in routes:
            routes[name] = ModelRoute(model_id, node.name, node.kind, node.url)
            limits[node.name] = node.max_concurrent_calls
    # Nodes that limit their calls at once share their slots with every other job's calls (jobs.fairness).
    slots = (CallSlots(job_id=str(job.id), owner_id=job.owner_id, interactive=job.interactive, limits=limits)
             if any(limits.values()) else None)
    return GatewayConfig(
        job_id=str(job.id), default_model=job.model_id, routes=routes, budget=job.token_budget,
        max_output_tokens=settings.AI_MAX_OUTPUT_TOKENS, call_timeout=settings.AI_CALL_TIMEOUT,
        max_body_bytes=settings.GATEWAY_MAX_BODY_BYTES, max_concurrent_calls=settings.GATEWAY_MAX_CONCURRENT_CALLS,
        max_connections=settings.GATEWAY_MAX_CONNECTIONS, socket_timeout=settings.GATEWAY_SOCKET_TIMEOUT,
        drain_timeout=settings.GATEWAY_DRAIN_SECONDS, result_limit=settings.JOB_RESULT_MAX_BYTES, on_event=on_event,
        node_wait=settings.AI_NODE_WAIT_SECONDS, call_slots=slots,
    )
