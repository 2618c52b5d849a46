from django.apps import AppConfig


class ParleyConfig(AppConfig):
    name = "parley"
    label = "parley"
    verbose_name = "Parley"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Runs once the app registry is loaded: connects the user deactivation handlers."""
        from parley import signals  # noqa: F401
