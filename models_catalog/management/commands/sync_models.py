from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from models_catalog.services import sync_catalogue


class Command(BaseCommand):
    help = "Ask every enabled AI node for its models now, update the catalogue, and print what was found."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout-ms", type=int, default=settings.AI_NODE_TIMEOUT,
                            help="How long to wait for the nodes (default AI_NODE_TIMEOUT).")

    def handle(self, *args, timeout_ms: int, **options) -> None:
        answer = sync_catalogue(timeout_ms=timeout_ms)
        for node in answer.nodes:
            if node.answered:
                self.stdout.write(f"node {node.name} ({node.url}): {node.model_count} model(s)")
            else:
                self.stdout.write(self.style.WARNING(f"node {node.name} ({node.url}): no answer: {node.error}"))
        for model in answer.models:
            details = " ".join(filter(None, (model.family, model.parameter_size, model.quantization)))
            aliases = f" aliases: {', '.join(model.aliases)}" if model.aliases else ""
            self.stdout.write(f"  {model.id} @ {model.node}: {model.status}"
                              f"{' loaded' if model.loaded else ''} {details}{aliases}".rstrip())
        if answer.warning:
            self.stdout.write(self.style.WARNING(f"warning: {answer.warning}"))
        self.stdout.write(f"{len(answer.models)} model(s) in the catalogue, "
                          f"{sum(m.status == 'available' for m in answer.models)} available")
