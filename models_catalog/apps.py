from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class ModelsCatalogConfig(AppConfig):
    name = "models_catalog"
    verbose_name = "Model catalogue"

    def ready(self) -> None:
        from .models import AINode, ModelCatalog
        from .services import catalogue_changed

        # Routes are cached (services.route_model): a node or model saved or deleted anywhere (the admin's forms, a
        # shell) makes every process route again. The services' own queryset updates call catalogue_changed.
        for model in (AINode, ModelCatalog):
            post_save.connect(catalogue_changed, sender=model, dispatch_uid=f"routes-on-save-{model.__name__}")
            post_delete.connect(catalogue_changed, sender=model, dispatch_uid=f"routes-on-delete-{model.__name__}")
