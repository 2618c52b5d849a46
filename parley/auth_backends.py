"""The password backend the standalone server signs in with: Django's ModelBackend, which also
tells the sign-in form when the password was right but the account is disabled.

Django's ModelBackend answers a disabled account exactly as a wrong password, so its owner reads
"enter a correct username and password" and retries a right password. Here the form may say the
account is disabled instead — only to someone who typed its password, so a stranger learns
nothing, and after the one password check Django makes anyway (no extra hashing to time).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import AllowAllUsersModelBackend, ModelBackend
from django.http import HttpRequest

# Set (True) on the request by a sign-in with a disabled account's right password.
DISABLED_ACCOUNT_ATTR = "parley_disabled_account"

_password_check = AllowAllUsersModelBackend()  # checks the password whatever is_active says


class DisabledAccountAwareBackend(ModelBackend):
    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> Any:
        user = _password_check.authenticate(request, username=username, password=password,
                                            **kwargs)
        if user is None or self.user_can_authenticate(user):
            return user
        if request is not None:
            setattr(request, DISABLED_ACCOUNT_ATTR, True)
        return None
