from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing and usage"

    def ready(self) -> None:
        from .models import ModelPrice
        from .pricing import prices_changed

        # Prices are cached (pricing.price_in_force): a price saved or deleted anywhere reaches every process.
        post_save.connect(prices_changed, sender=ModelPrice, dispatch_uid="prices-on-save")
        post_delete.connect(prices_changed, sender=ModelPrice, dispatch_uid="prices-on-delete")
