from django.urls import path, re_path

from parley import health, message_views, room_views, views

app_name = "parley"

urlpatterns = [
    path("", views.app, name="app"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("api/me", views.me, name="api-me"),
    path("api/rooms", views.rooms, name="api-rooms"),
    path("api/rooms/<str:slug>/messages", views.room_messages, name="api-room-messages"),
    path("api/rooms/<str:slug>/messages/<str:seq>", message_views.message_detail, name="api-room-message"),
    path("api/rooms/<str:slug>/messages/<str:seq>/reactions/<str:emoji>", message_views.message_reaction,
         name="api-room-message-reaction"),
    path("api/rooms/<str:slug>", room_views.room_detail, name="api-room"),
    path("api/rooms/<str:slug>/leave", room_views.room_leave, name="api-room-leave"),
    path("api/rooms/<str:slug>/members", views.room_members, name="api-room-members"),
    path("api/rooms/<str:slug>/members/<str:username>", room_views.room_member_detail, name="api-room-member"),
    path("api/dms", room_views.dms, name="api-dms"),
    path("api/users", room_views.users, name="api-users"),
    path("api/tokens", views.tokens, name="api-tokens"),
    path("api/tokens/<int:token_id>", views.token_detail, name="api-token"),
    # Last: any other /api/ path is a JSON 404 (DEBUG's HTML 404 page included).
    re_path(r"^api/", views.api_not_found, name="api-not-found"),
]
