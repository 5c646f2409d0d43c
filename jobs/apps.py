from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self) -> None:
        from core.lookups import on_changes_to

        from .models import Function, FunctionVersion
        from .services import functions_changed

        # Functions are cached (services.get_function); delete_function, a queryset update, calls functions_changed.
        on_changes_to(Function, FunctionVersion, call=functions_changed)
