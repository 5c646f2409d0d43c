from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing and usage"

    def ready(self) -> None:
        from core.lookups import on_changes_to

        from .models import ModelPrice
        from .pricing import prices_changed

        # Prices are cached (pricing.price_in_force).
        on_changes_to(ModelPrice, call=prices_changed)
