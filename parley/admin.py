from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from parley import conversation, rooms
from parley.models import ApiToken, Membership, Message, Room
from parley.services import MessageRefused, membership_remove, token_revoke
from parley.throttles import AdminLoginForm

admin.site.login_form = AdminLoginForm  # failed sign-ins are limited here too (parley/throttles.py)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "kind", "is_private", "archived_at", "owner", "last_seq", "created_at"]
    list_filter = ["kind", "is_private"]
    search_fields = ["slug", "title"]
    readonly_fields = ["last_seq", "epoch", "created_at"]
    inlines = [MembershipInline]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and {"title", "archived_at", "is_private"} & set(form.changed_data):
            rooms.notify_updated(room=obj)  # room_updated, as PATCH /api/rooms/<slug> sends it

    def save_formset(self, request, form, formset, change):
        # Removing a member through the service makes their open sockets leave the room now;
        # a member added here gets their RoomState and `room_added`, as through the API.
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            if isinstance(obj, Membership):
                membership_remove(room=obj.room, user=obj.user)
            else:
                obj.delete()
        for obj in instances:
            added = isinstance(obj, Membership) and obj.pk is None
            obj.save()
            if added and obj.room.is_private:
                rooms.member_added(room=obj.room, user=obj.user)  # their RoomState and room_added
        formset.save_m2m()


class MessageAdminForm(forms.ModelForm):
    class Meta:
        model = Message
        fields = ["text"]

    def clean_text(self) -> str:
        # The socket's rules for a text (length, NUL, trimming): an admin's edit is one too.
        try:
            return conversation.valid_text(self.cleaned_data["text"])
        except MessageRefused as refused:
            raise forms.ValidationError(refused.message) from None


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Every entry of the rooms' logs; a message's edit and delete go through parley.conversation,
    as a socket's do, so open pages see them at once (an `edit` / `delete` entry)."""

    form = MessageAdminForm
    list_display = ["room", "seq", "kind", "author", "short_text", "target_seq", "created_at"]
    list_filter = ["kind", "room"]
    search_fields = ["text", f"author__{get_user_model().USERNAME_FIELD}"]
    list_select_related = ["room", "author"]
    # The log is append-only from the outside: sequence numbers are assigned by parley.services.
    readonly_fields = ["room", "seq", "kind", "author", "client_id", "created_at", "target_seq", "mentions",
                       "mention_room", "edited_at", "deleted_at", "reactions", "emoji", "count", "versions"]

    @admin.display(description="text")
    def short_text(self, obj: Message) -> str:
        return obj.text[:80]

    @admin.display(description="edit history (oldest first; erased when the message is deleted)")
    def versions(self, obj: Message) -> str:
        edits = Message.objects.filter(room_id=obj.room_id, kind=Message.Kind.EDIT, target_seq=obj.seq).order_by("seq")
        return format_html_join(mark_safe("<br>"), "#{}, {}: {}", ((e.seq, e.created_at, e.text) for e in edits)) or "—"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Only a message's text can change (an edit); the other entries are history.
        return super().has_change_permission(request, obj) and (obj is None or obj.kind == Message.Kind.MESSAGE)

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and (obj is None or obj.kind == Message.Kind.MESSAGE)

    def save_model(self, request, obj: Message, form, change) -> None:
        if change and "text" in form.changed_data:
            conversation.message_edit(room=obj.room, actor=request.user, seq=obj.seq, text=obj.text,
                                      source="admin", moderator=True)

    def delete_model(self, request, obj: Message) -> None:
        # A tombstone, not a row deleted: the log keeps its seq, and open pages see the delete.
        if obj.kind == Message.Kind.MESSAGE:
            conversation.message_delete(room=obj.room, actor=request.user, seq=obj.seq, source="admin")

    def delete_queryset(self, request, queryset) -> None:
        for obj in queryset.filter(kind=Message.Kind.MESSAGE).select_related("room"):
            self.delete_model(request, obj)


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
