"""`manage.py create_token USERNAME [--create-user] [--name NAME]`: prints a new API token.

USERNAME is the value of the user model's USERNAME_FIELD (an email address in a host whose
users log in by email).

The token is the last line of output, alone, so scripts can take it with `tail -n 1`.
"""

from django.core.management.base import BaseCommand, CommandError

from parley.selectors import user_get_by_username
from parley.services import token_create, user_create


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (alone, on the last line)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--create-user", action="store_true", help="create the user if missing")
        parser.add_argument("--name", default="cli", help="a label for the token")

    def handle(self, *args, username: str, create_user: bool, name: str, **options):
        user = user_get_by_username(username=username)
        if user is None:
            if not create_user:
                raise CommandError(f"no user {username!r} (add --create-user to create it)")
            user = user_create(username=username)
            self.stdout.write(f"created user {username!r} (no password: token sign-in only)")
        _, raw = token_create(user=user, name=name)
        self.stdout.write(raw)
