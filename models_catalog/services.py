"""The model catalogue: which AI nodes exist, what they serve, and which node serves a model.

`sync_catalogue` asks every enabled node at once, bounded by a timeout, and merges the answers into
`ModelCatalog` rows; `route_model` reads those rows to pick a node. Only `nodes.py` speaks HTTP to a node, and
that HTTP always happens outside database transactions (a slow node must not hold row locks).
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Case, QuerySet, Value, When
from django.utils import timezone

from core.errors import DomainError
from core.lookups import CachedLookup

from .models import AINode, ModelCatalog, ModelStatus, NodeKind, NodeSource
from nodeclient import NodeError, NodeModel, client_for

logger = logging.getLogger(__name__)

MODEL_ID_MAX_LENGTH = 200
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")
# More threads than this would mean more nodes than a catalogue of this kind is built for.
MAX_PARALLEL_NODES = 32


@dataclass(frozen=True)
class NodeConfig:
    name: str
    kind: str
    url: str
    queue: str
    # Model calls the node serves at once across all its workers (jobs.fairness.call_slots); None: no limit.
    max_concurrent_calls: int | None = None
    # Set by route_model: the model's id on this node (an alias already resolved); empty otherwise.
    model_id: str = ""


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    size: int | None
    status: str
    node: str
    family: str
    parameter_size: str
    quantization: str
    loaded: bool
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class NodeReport:
    """How one node fared in a sync: `error` is empty when it listed its models."""

    name: str
    url: str
    answered: bool
    model_count: int
    error: str


@dataclass(frozen=True)
class CatalogAnswer:
    models: list[CatalogEntry]
    nodes: list[NodeReport]
    warning: str  # empty when every node answered with at least one model


# --- nodes ------------------------------------------------------------------------------------------------------

def configured_nodes() -> list[NodeConfig]:
    """The nodes from settings: AI_NODES (a JSON list of {name, kind, url, queue, max_concurrent_calls}) or the single
    AI_NODE_URL (with AI_NODE_MAX_CONCURRENT_CALLS).

    Raises ImproperlyConfigured when AI_NODES is malformed, names a node twice or gives an unknown kind.
    """
    if not settings.AI_NODES:
        return [NodeConfig(name="default", kind=settings.AI_NODE_KIND, url=settings.AI_NODE_URL,
                           queue=settings.JOB_QUEUE,
                           max_concurrent_calls=settings.AI_NODE_MAX_CONCURRENT_CALLS or None)]
    try:
        entries = json.loads(settings.AI_NODES)
        nodes = [NodeConfig(name=str(e["name"]), kind=e.get("kind", NodeKind.OLLAMA), url=str(e["url"]),
                            queue=str(e.get("queue") or settings.JOB_QUEUE),
                            max_concurrent_calls=_call_limit(e.get("max_concurrent_calls"))) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImproperlyConfigured(f"AI_NODES must be a JSON list of {{name, kind, url, queue, "
                                   f"max_concurrent_calls}}: {exc}") from None
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        raise ImproperlyConfigured(f"AI_NODES names a node twice: {names}")
    for node in nodes:
        if node.kind not in NodeKind.values:
            raise ImproperlyConfigured(f"AI_NODES: node {node.name!r} has kind {node.kind!r}; "
                                       f"expected one of {NodeKind.values}")
    return nodes


def _call_limit(value: object) -> int | None:
    """A node's `max_concurrent_calls` from AI_NODES: a positive whole number, or absent (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_concurrent_calls must be a whole number of at least 1, got {value!r}")
    return value


def node_named(name: str) -> NodeConfig | None:
    """The enabled node called `name`, from the catalogue (settings or admin) or else from settings alone.

    None when no such node exists or the operator disabled it.
    """
    row = AINode.objects.filter(name=name).first()
    if row is not None:
        return _config(row) if row.enabled else None
    return next((node for node in configured_nodes() if node.name == name), None)


def sync_node_rows() -> list[AINode]:
    """Write the nodes from settings into AINode rows; return every enabled node (settings and admin).

    Settings win for kind, URL, queue and call limit; `enabled` stays the operator's. A node that left the settings is
    deleted with its catalogue rows (aliases survive: they name models, not nodes). Every process (web, worker,
    beat) must therefore see the same AI_NODES.
    """
    configured = configured_nodes()
    existing = {node.name: node for node in AINode.objects.filter(name__in=[c.name for c in configured])}
    for config in configured:
        wanted = {"kind": config.kind, "url": config.url, "queue": config.queue,
                  "max_concurrent_calls": config.max_concurrent_calls, "source": NodeSource.SETTINGS}
        row = existing.get(config.name)
        if row is None:
            AINode.objects.get_or_create(name=config.name, defaults=wanted)
        elif any(getattr(row, field) != value for field, value in wanted.items()):
            AINode.objects.filter(pk=row.pk).update(**wanted)
            catalogue_changed()
    gone = list(AINode.objects.filter(source=NodeSource.SETTINGS).exclude(name__in=[c.name for c in configured])
                .values_list("name", flat=True))
    if gone:
        logger.info("AI nodes %s are no longer in settings; removing them from the catalogue", gone)
        AINode.objects.filter(source=NodeSource.SETTINGS, name__in=gone).delete()
    return list(AINode.objects.filter(enabled=True))


def set_nodes_enabled(*, nodes: QuerySet[AINode], enabled: bool) -> int:
    """The operator's switch for nodes. A re-enabled node's models stay unavailable until the next sync, or until a
    job asks for one of them (route_model then asks the node)."""
    count = nodes.update(enabled=enabled)
    if enabled:
        ModelCatalog.objects.filter(node__in=nodes, status=ModelStatus.AVAILABLE).update(
            status=ModelStatus.UNAVAILABLE, loaded=False)
    catalogue_changed()
    return count


def set_models_enabled(*, models: QuerySet[ModelCatalog], enabled: bool) -> int:
    """The operator's switch for models (and aliases). A re-enabled model is unavailable until the next sync, or
    until a job asks for it (route_model then asks its node)."""
    if enabled:
        count = models.update(enabled=True, status=Case(
            When(status=ModelStatus.DISABLED, then=Value(ModelStatus.UNAVAILABLE)), default="status"))
    else:
        count = models.update(enabled=False, status=ModelStatus.DISABLED)
    catalogue_changed()
    return count


def _config(node: AINode, model_id: str = "") -> NodeConfig:
    return NodeConfig(name=node.name, kind=node.kind, url=node.url, queue=node.queue,
                      max_concurrent_calls=node.max_concurrent_calls, model_id=model_id)


# --- the catalogue ----------------------------------------------------------------------------------------------

def sync_catalogue(*, timeout_ms: int | None = None) -> CatalogAnswer:
    """Ask every enabled node for its models at once, record the answers, and return the whole catalogue.

    The answer comes within `timeout_ms` (default AI_NODE_TIMEOUT) plus the time of a few queries, whatever the
    nodes do: each client call is bounded by the timeout and the wait for all of them by one deadline. A node
    that does not answer in time (or answers garbage, or an HTTP error) keeps its last known models, marked
    unavailable, and adds to `warning`. Models a node that answered no longer lists become unavailable. Nothing
    is ever listed that no node has reported.
    """
    timeout_ms = settings.AI_NODE_TIMEOUT if timeout_ms is None else timeout_ms
    nodes = sync_node_rows()
    results = _ask_nodes(nodes, timeout_ms) if nodes else {}
    reports = _record(nodes, results, timezone.now())
    warnings = [f"AI node {r.name!r} did not answer ({r.error}); its last known models are listed as "
                f"unavailable." for r in reports if not r.answered]
    warnings += [f"AI node {r.name!r} lists no models." for r in reports if r.answered and not r.model_count]
    if not nodes:
        warnings.append("No AI node is configured or enabled.")
    return CatalogAnswer(models=catalogue_entries(), nodes=reports, warning=" ".join(warnings))


def catalogue_entries() -> list[CatalogEntry]:
    """Every model of the catalogue as it stands (no node is asked), with the aliases that name it."""
    aliases: dict[str, list[str]] = {}
    for alias in ModelCatalog.objects.aliases().filter(enabled=True).order_by("model_id"):
        aliases.setdefault(alias.alias_of, []).append(alias.model_id)
    return [
        CatalogEntry(
            id=row.model_id, name=row.name or row.model_id, size=row.size,
            status=ModelStatus.DISABLED if not row.node.enabled else row.status, node=row.node.name,
            family=row.family, parameter_size=row.parameter_size, quantization=row.quantization,
            loaded=row.loaded and row.status == ModelStatus.AVAILABLE and row.node.enabled,
            aliases=tuple(aliases.get(row.model_id, ())),
        )
        for row in ModelCatalog.objects.real().select_related("node")
    ]


def _fetch(kind: str, url: str, timeout_s: float) -> list[NodeModel]:
    # Runs in a pool thread: it must not touch the database (it would open a connection per thread).
    return client_for(kind, url, timeout_s).list_models()


def _ask_nodes(nodes: list[AINode], timeout_ms: int) -> dict[int, list[NodeModel] | str]:
    """Each node's models, or why it gave none; keyed by node pk. Returns by the deadline whatever happens."""
    timeout_s = timeout_ms / 1000
    deadline = time.monotonic() + timeout_s
    executor = ThreadPoolExecutor(max_workers=min(len(nodes), MAX_PARALLEL_NODES), thread_name_prefix="catalog")
    try:
        futures: dict[Future, AINode] = {executor.submit(_fetch, n.kind, n.url, timeout_s): n for n in nodes}
        done, _ = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        # Never join the threads: a hung node's thread ends by itself on its socket timeout, after we answered.
        # An Ollama listing is two requests, each bounded by the timeout, so the deadline is what bounds us.
        executor.shutdown(wait=False, cancel_futures=True)
    results: dict[int, list[NodeModel] | str] = {}
    for future, node in futures.items():
        if future not in done:
            results[node.pk] = f"node_timeout: no model list within {timeout_ms} ms"
            continue
        try:
            results[node.pk] = future.result()
        except NodeError as exc:
            results[node.pk] = str(exc)
        except ValueError as exc:  # client_for refuses the node's kind or URL
            results[node.pk] = f"node_misconfigured: {exc}"
        except Exception as exc:  # a node's garbage may break parsing in ways the client did not foresee
            logger.warning("AI node %s: unreadable model list: %r", node.name, exc)
            results[node.pk] = f"node_bad_response: unreadable model list ({type(exc).__name__})"
    return results


def _valid_models(node: AINode, models: list[NodeModel]) -> dict[str, NodeModel]:
    """The node's models that we can list and route, by id; others are logged and skipped, never guessed at."""
    valid: dict[str, NodeModel] = {}
    for model in models:
        if not isinstance(model.id, str) or not MODEL_ID_PATTERN.match(model.id):
            logger.warning("AI node %s lists a model id we cannot use: %.100r", node.name, model.id)
            continue
        valid.setdefault(model.id, model)
    return valid


def _record(nodes: list[AINode], results: dict[int, list[NodeModel] | str], now: datetime) -> list[NodeReport]:
    """Write what each node said into the catalogue, in one transaction; one report per node."""
    reports = []
    with transaction.atomic():
        for node in nodes:
            result = results[node.pk]
            rows = ModelCatalog.objects.filter(node=node)
            if isinstance(result, str):
                AINode.objects.filter(pk=node.pk).update(last_error=result[:2000])
                rows.filter(status=ModelStatus.AVAILABLE).update(status=ModelStatus.UNAVAILABLE, loaded=False)
                logger.warning("AI node %s did not list its models: %s", node.name, result)
                reports.append(NodeReport(node.name, node.url, False, 0, result))
                continue
            models = _valid_models(node, result)
            AINode.objects.filter(pk=node.pk).update(last_seen_at=now, last_error="")
            for model in models.values():
                _upsert(node, model, now)
            rows.exclude(model_id__in=list(models)).filter(status=ModelStatus.AVAILABLE).update(
                status=ModelStatus.UNAVAILABLE, loaded=False)
            reports.append(NodeReport(node.name, node.url, True, len(models), ""))
        catalogue_changed()
    return reports


def _upsert(node: AINode, model: NodeModel, now: datetime) -> None:
    fields = {
        "name": model.name[:200], "size": model.size, "family": model.family[:100],
        "parameter_size": model.parameter_size[:50], "quantization": model.quantization[:50],
        "loaded": model.loaded, "last_seen_at": now,
    }
    # The status depends on the operator's switch as it is now, read in the same statement.
    status = Case(When(enabled=True, then=Value(ModelStatus.AVAILABLE)), default=Value(ModelStatus.DISABLED))
    updated = ModelCatalog.objects.filter(node=node, model_id=model.id).update(**fields, status=status)
    if not updated:
        # get_or_create: a concurrent sync may create the same row between our UPDATE and this INSERT.
        ModelCatalog.objects.get_or_create(node=node, model_id=model.id, defaults={
            **fields, "status": ModelStatus.AVAILABLE, "first_seen_at": now})


# --- routing ----------------------------------------------------------------------------------------------------

# Given the names of the nodes that could serve a job, how many jobs each has queued. The caller (jobs) counts
# them: the catalogue knows nothing of jobs.
QueuedCounter = Callable[[list[str]], Mapping[str, int]]


@dataclass(frozen=True)
class Route:
    """Where a model id can run now: the nodes that serve it (its alias resolved), as `route_model` caches them."""

    candidates: tuple[tuple[NodeConfig, bool], ...]  # (the node, with the model's id on it; whether it is loaded)


# Routes by the model id asked for. Invalidated by every change to the catalogue (`catalogue_changed`): each sync,
# the operator's switches, and saves and deletes of nodes and models (models_catalog.apps).
_routes: CachedLookup[Route] = CachedLookup("model-routes")


def catalogue_changed(**_: Any) -> None:
    """Every process looks its routes up again (core.lookups: CachedLookup.invalidate). Also a signal receiver."""
    _routes.invalidate()


def route_model(model_id: str, *, queued_jobs: QueuedCounter | None = None) -> NodeConfig:
    """The node that serves `model_id`, with `model_id` resolved through the operator's aliases.

    Only an enabled model that its enabled node listed at the last sync is routed; when its only nodes had not
    answered then, they are asked again first (see `_recheck_nodes_of`). When several nodes serve it,
    the choice is deterministic: a node that holds the model in memory (`loaded`) first, then the node with the
    fewest queued jobs (as `queued_jobs` counts them; without it, ties go by name), then the node whose name sorts
    first. When the catalogue is empty (first start), the nodes are asked once, synchronously. Routes are cached
    (core.lookups): a model routed before runs no SQL unless several nodes serve it.

    Raises DomainError `invalid_model_id` (400) for an id that cannot be a model id, and `unknown_model` (400,
    with `available`: the ids one may use) when the model is unknown, disabled or unavailable.
    """
    model_id = check_model_id(model_id)
    route = _routes.get(model_id, lambda: _load_route(model_id))
    if route is None:
        target = _resolve_alias(model_id)
        if _recheck_nodes_of(target):
            route = _load_route(model_id)
        if route is None:
            raise _unknown_model(model_id, target)
    return _pick(route.candidates, queued_jobs)


def _load_route(model_id: str) -> Route | None:
    if not ModelCatalog.objects.real().exists():
        sync_catalogue(timeout_ms=settings.AI_NODE_TIMEOUT)
    rows = ModelCatalog.objects.routable().filter(model_id=_resolve_alias(model_id)).select_related("node")
    candidates = tuple((_config(row.node, model_id=row.model_id), row.loaded) for row in rows)
    return Route(candidates) if candidates else None


_last_recheck: dict[str, float] = {}  # by node URL
_recheck_lock = threading.Lock()


def _recheck_nodes_of(model_id: str) -> bool:
    """Ask again the enabled nodes that had `model_id` but did not answer at the last sync; True if any was asked.

    A node that came back would otherwise stay refused until the next catalogue sync. Each node is asked at most
    once per AI_NODE_RECHECK_SECONDS in this process (a node that stays down must not cost every request a
    timeout, nor be flooded), and the asking is bounded by AI_NODE_TIMEOUT.
    """
    nodes = list(AINode.objects.filter(
        enabled=True, models__model_id=model_id, models__enabled=True, models__status=ModelStatus.UNAVAILABLE,
    ).distinct())
    now = time.monotonic()
    with _recheck_lock:
        nodes = [n for n in nodes if now - _last_recheck.get(n.url, -math.inf) >= settings.AI_NODE_RECHECK_SECONDS]
        for node in nodes:
            _last_recheck[node.url] = now
    if not nodes:
        return False
    logger.info("model %s is unavailable: asking its nodes %s again", model_id, [n.name for n in nodes])
    _record(nodes, _ask_nodes(nodes, settings.AI_NODE_TIMEOUT), timezone.now())
    return True


def available_model_ids() -> list[str]:
    """The ids a job may ask for now: routable models and the enabled aliases of routable models."""
    real = set(ModelCatalog.objects.routable().values_list("model_id", flat=True))
    aliases = {alias for alias, target in ModelCatalog.objects.aliases().filter(enabled=True)
               .values_list("model_id", "alias_of") if target in real}
    return sorted(real | aliases)


def check_model_id(model_id: object) -> str:
    """`model_id` if it can be a model id at all; DomainError `invalid_model_id` (400) otherwise."""
    if not isinstance(model_id, str) or not MODEL_ID_PATTERN.match(model_id):
        raise DomainError(f"modelId must be 1-{MODEL_ID_MAX_LENGTH} characters of letters, digits and "
                          f". _ : / @ + -, starting with a letter or digit.", code="invalid_model_id")
    return model_id


def _resolve_alias(model_id: str) -> str:
    """The real model id behind `model_id`: itself when some node serves it (a real model wins over an alias)."""
    if ModelCatalog.objects.real().filter(model_id=model_id).exists():
        return model_id
    alias = ModelCatalog.objects.aliases().filter(model_id=model_id, enabled=True).first()
    return alias.alias_of if alias is not None else model_id


def _pick(candidates: tuple[tuple[NodeConfig, bool], ...], queued_jobs: QueuedCounter | None) -> NodeConfig:
    if len(candidates) == 1:
        return candidates[0][0]
    queued = queued_jobs([node.name for node, _ in candidates]) if queued_jobs else {}
    node, _ = min(candidates, key=lambda c: (not c[1], queued.get(c[0].name, 0), c[0].name))
    return node


def _unknown_model(asked: str, target: str) -> DomainError:
    rows = ModelCatalog.objects.filter(model_id__in={asked, target})
    if not rows.exists():
        reason = "unknown"
    elif not rows.filter(enabled=True).exists():
        reason = "disabled"
    else:
        reason = "unavailable: its node is down or no longer serves it"
    available = available_model_ids()
    return DomainError(
        f"Model {asked!r} is {reason}. Available: {', '.join(available) or 'none'}.",
        code="unknown_model", available=available,
    )
