"""`manage.py parley_expire_uploads`: delete the uploads no message took within
PARLEY_UPLOAD_UNATTACHED_TTL_SECS (their stored files too). Each upload request also sweeps a
few (parley.uploads.upload_create); run this from cron to sweep the rest, e.g. hourly.
"""

from django.core.management.base import BaseCommand

from parley.uploads import uploads_expired_delete


class Command(BaseCommand):
    help = "Delete expired unattached uploads and their files; prints how many."

    def handle(self, *args, **options):
        deleted = uploads_expired_delete()
        self.stdout.write(f"deleted {deleted} expired upload(s)")
