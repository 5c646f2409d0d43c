from django.apps import AppConfig


class OutboundConfig(AppConfig):
    name = "outbound"
    verbose_name = "Events out: webhooks, thresholds, usage export"

    def ready(self) -> None:
        from core.lookups import on_changes_to

        from .models import Budget
        from .services import budgets_changed

        # Which keys have budgets is cached (services.note_key).
        on_changes_to(Budget, call=budgets_changed)
