from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.i18n import JavaScriptCatalog

from madoguchi.views.api import api
from madoguchi.views.console import actions, channels, pages, pwa
from madoguchi.views.public_media import public_media

urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="madoguchi/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(
            template_name="madoguchi/password_change.html", success_url="/password/done/"
        ),
        name="password_change",
    ),
    path(
        "password/done/",
        auth_views.PasswordChangeDoneView.as_view(template_name="madoguchi/password_changed.html"),
        name="password_change_done",
    ),
    path("", pages.inbox, name="inbox"),
    path("c/<int:conversation_id>", pages.inbox, name="conversation"),
    path("fragments/list", pages.conversation_list_fragment, name="list_fragment"),
    path("fragments/counts", pages.counts, name="counts"),
    path("fragments/thread/<int:conversation_id>", pages.thread_fragment, name="thread_fragment"),
    path("c/<int:conversation_id>/send", actions.send_text, name="send_text"),
    path("c/<int:conversation_id>/template", actions.send_template, name="send_template"),
    path("c/<int:conversation_id>/attach", actions.send_attachment, name="send_attachment"),
    path("c/<int:conversation_id>/note", actions.add_note, name="add_note"),
    path("c/<int:conversation_id>/claim", actions.claim, name="claim"),
    path("c/<int:conversation_id>/merge", actions.merge_contacts, name="merge_contacts"),
    path("c/<int:conversation_id>/assign", actions.assign, name="assign"),
    path("c/<int:conversation_id>/status", actions.set_status, name="set_status"),
    path("c/<int:conversation_id>/seen", actions.mark_seen, name="mark_seen"),
    path("new/", pages.new_conversation, name="new_conversation"),
    path("new/start", actions.start_conversation, name="start_conversation"),
    path("search/", pages.search, name="search"),
    path("settings/", pages.preferences, name="preferences"),
    path("settings/save", actions.save_preferences, name="save_preferences"),
    path("settings/canned", actions.save_canned_reply, name="save_canned_reply"),
    path(
        "settings/canned/<int:reply_id>/delete",
        actions.delete_canned_reply,
        name="delete_canned_reply",
    ),
    path("media/<int:message_id>", pages.media, name="media"),
    path("channels/", channels.channels_page, name="channels"),
    path("channels/add/<str:kind>", channels.add_channel, name="channel_add"),
    path("channels/<int:channel_id>/edit", channels.edit_channel, name="channel_edit"),
    path("channels/<int:channel_id>/active", channels.set_channel_active, name="channel_active"),
    # Signed, expiring links to outbound files, for platforms that fetch media (Viber).
    path("public/media/<str:token>/<str:name>", public_media, name="public_media"),
    path("jsi18n/", JavaScriptCatalog.as_view(packages=["madoguchi"]), name="javascript-catalog"),
    path("sw.js", pwa.service_worker, name="service_worker"),
    path("offline/", pwa.offline, name="offline"),
    path("api/v1/", api.urls),
]
