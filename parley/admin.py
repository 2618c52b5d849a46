from django.contrib import admin
from django.contrib.auth import get_user_model

from parley.models import ApiToken, Membership, Message, Room
from parley.services import membership_remove, token_revoke
from parley.throttles import AdminLoginForm

admin.site.login_form = AdminLoginForm  # failed sign-ins are limited here too (parley/throttles.py)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "is_private", "owner", "last_seq", "created_at"]
    list_filter = ["is_private"]
    search_fields = ["slug", "title"]
    readonly_fields = ["last_seq", "epoch", "created_at"]
    inlines = [MembershipInline]

    def save_formset(self, request, form, formset, change):
        # Removing a member through the service makes their open sockets leave the room now.
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            if isinstance(obj, Membership):
                membership_remove(room=obj.room, user=obj.user)
            else:
                obj.delete()
        for obj in instances:
            obj.save()
        formset.save_m2m()


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["room", "seq", "author", "short_text", "created_at"]
    list_filter = ["room"]
    search_fields = ["text", f"author__{get_user_model().USERNAME_FIELD}"]
    list_select_related = ["room", "author"]
    # The log is append-only from the outside: sequence numbers are assigned by parley.services.
    readonly_fields = ["room", "seq", "author", "client_id", "created_at"]

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text[:80]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = [f"user__{get_user_model().USERNAME_FIELD}", "name", "prefix"]
    readonly_fields = ["prefix", "key_hash", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset) -> None:
        for token in queryset:
            token_revoke(token=token)

    def has_add_permission(self, request) -> bool:
        return False  # made with `manage.py create_token` or POST /api/tokens, shown once
