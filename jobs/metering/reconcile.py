"""Estimated calls counted exactly once their node can count again.

When a node does not report a call's counts and cannot tokenize either (it died half way), the gateway bills a bound
of the prompt and the pieces it streamed (jobs.metering.gateway) and keeps, on the ledger row, what to count them
from: the prompt as sent and the text delivered (`LLMCall.recount`). `reconcile_estimated_calls` (a beat task) asks
the node's tokenizer for both once the node answers again and corrects, in one transaction, the ledger row (counts
and cost, at the price in force when the call was made), the job's totals, the day's roll-up (and with it the
owner's standing against their quota) and the job's hold if it still has one, and appends a correction receipt to the
job's chain (jobs.metering.receipts): the call's own receipt is never rewritten. The text is then dropped.
"""
import logging
from typing import Any

from django.conf import settings
from django.db import transaction

from billing import job_money
from billing.pricing import cost_of_call
from billing.rollups import add_correction_to_rollups
from core.increments import add_to
from models_catalog.services import node_named
from nodeclient import NodeClient, client_for

from ..models import Job, LLMCall
from . import wire
from .ledger import job_facts
from .receipts import correction_receipt

logger = logging.getLogger(__name__)

BATCH = 100


def recount_record(call: wire.LLMRequest, text: str) -> dict[str, Any]:
    """What an estimated call's counts can be made again from: its prompt as sent and the text delivered."""
    record: dict[str, Any] = {"op": call.op, "text": text}
    if call.op == wire.GENERATE:
        record.update(prompt=call.prompt, system=call.system, raw=call.raw)
    else:
        record["messages"] = call.messages
    return record


def reconcile_estimated_calls(*, limit: int = BATCH) -> int:
    """Count again the oldest estimated calls still waiting (at most `limit`); returns how many were corrected.
    A call whose node is still down, or gone, waits for the next run."""
    corrected = 0
    clients: dict[str, NodeClient | None] = {}
    for call in LLMCall.objects.filter(recount__isnull=False).order_by("created_at")[:limit]:
        if call.node not in clients:
            node = node_named(call.node)
            clients[call.node] = node and client_for(node.kind, node.url, settings.AI_CALL_TIMEOUT)
        client = clients[call.node]
        if client is not None and _reconcile(call, client):
            corrected += 1
    for client in clients.values():
        if client is not None:
            client.close()
    return corrected


def _exact_counts(call: LLMCall, client: NodeClient) -> tuple[int, int] | None:
    record = call.recount
    if record["op"] == wire.GENERATE:
        prompt = client.count_prompt_tokens(call.model_id, prompt=record["prompt"], system=record["system"],
                                            raw=record["raw"])
    else:
        prompt = client.count_prompt_tokens(call.model_id, messages=record["messages"])
    completion = client.count_text_tokens(call.model_id, record["text"]) if record["text"] else 0
    if prompt is None or completion is None:
        return None
    return prompt, min(completion, call.max_tokens_granted or completion)


def _reconcile(call: LLMCall, client: NodeClient) -> bool:
    counts = _exact_counts(call, client)  # HTTP to the node: before the transaction, never inside it
    if counts is None:
        return False
    prompt, completion = counts
    with transaction.atomic():
        row = LLMCall.objects.select_for_update().filter(pk=call.pk, recount__isnull=False).first()
        if row is None:  # another run corrected it first
            return False
        cost = cost_of_call(model_id=row.model_id, prompt_tokens=prompt, completion_tokens=completion,
                            at=row.created_at)
        deltas = {"prompt_tokens": prompt - row.prompt_tokens, "completion_tokens": completion - row.completion_tokens,
                  "cost": (cost or 0) - (row.cost or 0)}
        changes = {name: value for name, value in deltas.items() if value}
        owner_id, function_id, _, _ = job_facts(row.job_id)
        if changes:  # the call's receipt stays; a correction naming it is appended to its job's chain
            correction_receipt(row, owner_id=owner_id, reason="recount", prompt_tokens=prompt,
                               completion_tokens=completion, cost=cost)
        LLMCall.objects.filter(pk=row.pk).update(prompt_tokens=prompt, completion_tokens=completion, cost=cost,
                                                 recount=None)
        if changes:
            add_to(Job, {"id": row.job_id}, changes)
            add_correction_to_rollups(row, owner_id=owner_id, function_id=function_id, increments=changes)
            job_money.spend(job_id=row.job_id, cost=deltas["cost"],
                            tokens=deltas["prompt_tokens"] + deltas["completion_tokens"])
    logger.info("job %s: %s call %s counted again: %s prompt + %s completion tokens (was %s + %s)", row.job_id,
                row.model_id, row.pk, prompt, completion, row.prompt_tokens, row.completion_tokens)
    return True
