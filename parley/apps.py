from django.apps import AppConfig


class ParleyConfig(AppConfig):
    name = "parley"
    label = "parley"
    verbose_name = "Parley"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Runs once the app registry is loaded: checks the PARLEY setting (an unknown key or a
        bad value stops the start here, not at a socket's first read), then connects Parley's
        receivers and parley.events' subscribers (fan-out, the room-log watch, the
        message_posted signal)."""
        from parley import fanout, receivers, revocation, roomwatch  # noqa: F401
        from parley.conf import check_at_startup

        check_at_startup()
        from parley.conf import parley_settings

        if parley_settings.MAIL_NOTIFICATIONS:
            from parley.contrib import mail_notifications

            mail_notifications.connect()
