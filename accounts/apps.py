from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "API keys"

    def ready(self) -> None:
        from django.contrib.auth.models import User

        from .models import ApiKey, Quota
        from .services import forget_keys

        # Keys are cached with their user and quota (accounts.services.authenticate_key): any saved or deleted key,
        # user or quota (the admin's forms, a shell) makes every process look its keys up again.
        for model in (ApiKey, User, Quota):
            post_save.connect(forget_keys, sender=model, dispatch_uid=f"forget-keys-on-save-{model.__name__}")
            post_delete.connect(forget_keys, sender=model, dispatch_uid=f"forget-keys-on-delete-{model.__name__}")
