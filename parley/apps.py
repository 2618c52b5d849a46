from django.apps import AppConfig


class ParleyConfig(AppConfig):
    name = "parley"
    label = "parley"
    verbose_name = "Parley"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Runs once the app registry is loaded: checks the PARLEY setting (an unknown key or a
        bad value stops the start here, not at a socket's first read) and connects the user
        deactivation handlers."""
        from parley import signals  # noqa: F401
        from parley.conf import check_at_startup

        check_at_startup()
