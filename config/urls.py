from django.contrib import admin
from django.urls import include, path

from parley.views import admin_login, login_page, password_reset, signup

urlpatterns = [
    # Both sign-in pages ahead of the stock ones, for their failed-attempt limits.
    path("admin/login/", admin_login),
    path("admin/", admin.site.urls),
    path("accounts/login/", login_page, name="login"),
    path("accounts/signup/", signup, name="signup"),
    # Ahead of the stock one, for its limits on mails sent (parley/throttles.py).
    path("accounts/password_reset/", password_reset, name="password_reset"),
    # The rest of Django's: logout, password_reset/done/, reset/<uidb64>/<token>/, reset/done/,
    # password_change/ (templates in config/templates/registration/, the admin's for the last).
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("parley.urls")),
]

# The API's errors are JSON whatever raised them; other pages keep Django's.
handler400 = "parley.views.bad_request"
handler403 = "parley.views.permission_denied"
handler404 = "parley.views.page_not_found"
handler500 = "parley.views.server_error"
