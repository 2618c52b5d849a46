#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    # Load the settings before Django's command lookup does: it swallows a settings error and
    # then answers "Unknown command" for every command the apps provide (create_token, …).
    try:
        settings.INSTALLED_APPS  # noqa: B018 - the access loads config.settings
    except ImproperlyConfigured as exc:
        sys.exit(f"manage.py: Parley's configuration is wrong: {exc}")

    execute_from_command_line(sys.argv)
