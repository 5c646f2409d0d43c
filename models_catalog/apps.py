from django.apps import AppConfig


class ModelsCatalogConfig(AppConfig):
    name = "models_catalog"
    verbose_name = "Model catalogue"

    def ready(self) -> None:
        from core.lookups import on_changes_to

        from .models import AINode, ModelCatalog
        from .services import catalogue_changed

        # Routes are cached (services.route_model); the services' own queryset updates call catalogue_changed.
        on_changes_to(AINode, ModelCatalog, call=catalogue_changed)
