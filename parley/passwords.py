"""Password rules Django does not ship (settings.AUTH_PASSWORD_VALIDATORS lists them all)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError


class NonSpaceLengthValidator:
    """At least `min_length` characters that are not whitespace.

    Django's MinimumLengthValidator counts spaces, and the sign-up form does not strip them,
    so a password of eight spaces (or one letter and seven spaces) passed it.
    """

    def __init__(self, min_length: int = 8) -> None:
        self.min_length = min_length

    def validate(self, password: str, user: Any = None) -> None:
        if sum(1 for ch in password if not ch.isspace()) < self.min_length:
            raise ValidationError(
                "This password must contain at least %(min_length)d characters that are not spaces.",
                code="password_too_short_without_spaces",
                params={"min_length": self.min_length},
            )

    def get_help_text(self) -> str:
        return f"Your password must contain at least {self.min_length} characters that are not spaces."
