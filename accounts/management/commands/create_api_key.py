from django.contrib.auth.models import User
from django.core.management.base import BaseCommand

from accounts.services import create_api_key


class Command(BaseCommand):
    help = "Create an API key for a user (the user is created when missing) and print it once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")
        parser.add_argument("--staff", action="store_true",
                            help="Make a new user an operator: staff with full access to the admin.")

    def handle(self, *args, username: str, name: str, staff: bool, **options) -> None:
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": staff, "is_superuser": staff}
        )
        _, raw_key = create_api_key(user=user, name=name)
        if created:
            self.stderr.write(f"created user {username}")
        self.stdout.write(raw_key)
