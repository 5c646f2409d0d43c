"""Which AI nodes exist and which node serves a model."""
import json
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class NodeConfig:
    name: str
    kind: str
    url: str
    queue: str


def configured_nodes() -> list[NodeConfig]:
    """The nodes from settings: AI_NODES (a JSON list of {name, kind, url, queue}) or the single AI_NODE_URL."""
    if settings.AI_NODES:
        try:
            entries = json.loads(settings.AI_NODES)
            return [NodeConfig(name=e["name"], kind=e.get("kind", "ollama"), url=e["url"],
                               queue=e.get("queue", settings.JOB_QUEUE)) for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise ImproperlyConfigured(f"AI_NODES must be a JSON list of {{name, kind, url, queue}}: {exc}") from None
    return [NodeConfig(name="default", kind=settings.AI_NODE_KIND, url=settings.AI_NODE_URL, queue=settings.JOB_QUEUE)]


def node_named(name: str) -> NodeConfig | None:
    return next((node for node in configured_nodes() if node.name == name), None)


def route_model(model_id: str) -> NodeConfig:
    """The node that serves `model_id`."""
    return configured_nodes()[0]
