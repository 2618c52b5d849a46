"""The password backend the standalone server signs in with: Django's ModelBackend, which also
tells the sign-in form when the password was right but the account is disabled.

Django's ModelBackend answers a disabled account exactly as a wrong password, so its owner reads
"enter a correct username and password" and retries a right password. Here the form may say the
account is disabled instead — only to someone who typed its password, so a stranger learns
nothing, and after the one password check Django makes anyway (no extra hashing to time).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import AllowAllUsersModelBackend, ModelBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

# Set (True) on the request by a sign-in with a disabled account's right password.
DISABLED_ACCOUNT_ATTR = "parley_disabled_account"

UserModel = get_user_model()
_password_check = AllowAllUsersModelBackend()  # checks the password whatever is_active says


class DisabledAccountAwareBackend(ModelBackend):
    """A failed password check ends the sign-in here (PermissionDenied, which Django's
    authenticate() turns into a failure): Django's ModelBackend, listed after this one so that
    sessions it signed in stay valid, would only hash the same password a second time."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> Any:
        user = _password_check.authenticate(request, username=username, password=password,
                                            **kwargs)
        if user is not None and self.user_can_authenticate(user):
            return user
        if user is not None and request is not None:
            setattr(request, DISABLED_ACCOUNT_ATTR, True)
        if user is not None or (password is not None
                                and (username or kwargs.get(UserModel.USERNAME_FIELD))):
            raise PermissionDenied("wrong password, or a disabled account")
        return None  # not a username and password: for other backends to answer
