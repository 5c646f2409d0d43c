from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self) -> None:
        from billing.rebuild import register_sources
        from core.lookups import on_changes_to

        from .metering.ledger import ROLLUP_SOURCES
        from .models import Function, FunctionVersion
        from .services import functions_changed

        # Functions are cached (services.get_function); delete_function, a queryset update, calls functions_changed.
        on_changes_to(Function, FunctionVersion, call=functions_changed)
        # The roll-ups' rebuild (billing) reads the ledger and the jobs through these.
        register_sources(ROLLUP_SOURCES)
