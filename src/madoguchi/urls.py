from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from madoguchi.views.api import api
from madoguchi.views.console import pages

urlpatterns = [
    path(
        "login/", auth_views.LoginView.as_view(template_name="madoguchi/login.html"), name="login"
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", pages.inbox, name="inbox"),
    path("c/<int:conversation_id>", pages.conversation, name="conversation"),
    path("media/<int:message_id>", pages.media, name="media"),
    path("api/v1/", api.urls),
]
