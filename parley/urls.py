from django.urls import path, re_path

from parley import (
    health,
    message_views,
    profile_views,
    room_views,
    search_views,
    upload_views,
    views,
)

app_name = "parley"

urlpatterns = [
    path("", views.app, name="app"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("api/me", views.me, name="api-me"),
    path("api/rooms", views.rooms, name="api-rooms"),
    path("api/rooms/state", views.room_states, name="api-room-states"),
    path("api/rooms/<str:slug>/read", views.room_read, name="api-room-read"),
    path("api/rooms/<str:slug>/state", views.room_state, name="api-room-state"),
    path("api/rooms/<str:slug>/messages", views.room_messages, name="api-room-messages"),
    path("api/rooms/<str:slug>/messages/<str:seq>", message_views.message_detail, name="api-room-message"),
    path("api/rooms/<str:slug>/messages/<str:seq>/reactions/<str:emoji>", message_views.message_reaction,
         name="api-room-message-reaction"),
    path("api/rooms/<str:slug>", room_views.room_detail, name="api-room"),
    path("api/rooms/<str:slug>/leave", room_views.room_leave, name="api-room-leave"),
    path("api/rooms/<str:slug>/uploads", upload_views.room_uploads, name="api-room-uploads"),
    path("api/rooms/<str:slug>/uploads/<int:upload_id>", upload_views.room_upload, name="api-room-upload"),
    path("api/rooms/<str:slug>/members", views.room_members, name="api-room-members"),
    path("api/rooms/<str:slug>/members/<str:username>", room_views.room_member_detail, name="api-room-member"),
    path("api/dms", room_views.dms, name="api-dms"),
    path("api/users", room_views.users, name="api-users"),
    path("api/profile", profile_views.profile, name="api-profile"),
    path("api/profile/avatar", profile_views.profile_avatar, name="api-profile-avatar-mine"),
    path("api/profiles", profile_views.profile_list, name="api-profiles"),
    path("api/profiles/<int:user_id>/avatar", profile_views.avatar, name="api-profile-avatar"),
    path("api/search", search_views.search_messages, name="api-search"),
    path("api/tokens", views.tokens, name="api-tokens"),
    path("api/tokens/<int:token_id>", views.token_detail, name="api-token"),
    # Last: any other /api/ path is a JSON 404 (DEBUG's HTML 404 page included).
    re_path(r"^api/", views.api_not_found, name="api-not-found"),
]
