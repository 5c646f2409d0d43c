from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self) -> None:
        from .models import Function, FunctionVersion
        from .services import functions_changed

        # Functions are cached (services.get_function): one saved or deleted anywhere (a new version, the admin's
        # forms, a shell) makes every process look them up again. delete_function calls functions_changed itself.
        for model in (Function, FunctionVersion):
            post_save.connect(functions_changed, sender=model, dispatch_uid=f"functions-on-save-{model.__name__}")
            post_delete.connect(functions_changed, sender=model, dispatch_uid=f"functions-on-delete-{model.__name__}")
