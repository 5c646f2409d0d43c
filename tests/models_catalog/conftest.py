"""Fixtures of the catalogue tests: see catalog_fixtures.py."""
from tests.models_catalog.catalog_fixtures import (  # noqa: F401 - fixtures are used by name
    ai_node,
    use_nodes,
    openai_node,
    ollama_node,
    dead_url,
    hung_url,
    relay,
    scripted_node,
)
