from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "API keys"

    def ready(self) -> None:
        from django.contrib.auth.models import User

        from core.lookups import on_changes_to

        from .models import ApiKey, Quota
        from .services import forget_keys

        # Keys are cached with their user and quota (accounts.services.authenticate_key).
        on_changes_to(ApiKey, User, Quota, call=forget_keys)
