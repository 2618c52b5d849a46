"""`manage.py bootstrap`: the idempotent first-run steps after migrate (the lobby room)."""

from django.core.management.base import BaseCommand

from parley.services import room_ensure

LOBBY_SLUG = "lobby"


class Command(BaseCommand):
    help = "Create the public lobby room if it does not exist."

    def handle(self, *args, **options):
        room = room_ensure(slug=LOBBY_SLUG, title="Lobby")
        self.stdout.write(f"room {room.slug!r} ready")
