"""The minimal console pages, security defaults and the OpenAPI document."""

from __future__ import annotations

from django.conf import settings as django_settings
from django.test import Client

from madoguchi import settings as madoguchi_settings


def login(client: Client, username: str) -> None:
    response = client.post("/login/", {"username": username, "password": "a-long-test-password-1"})
    assert response.status_code == 302, response.content


def test_the_inbox_needs_a_login(db):
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_customer_html_is_shown_as_text(customer_writes, users):
    customer_writes(text='<script>alert("x")</script><b>bold</b>')
    client = Client()
    login(client, "aiko")
    page = client.get("/?view=all").content.decode()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_a_conversation_page_is_access_checked(customer_writes, users, channel):
    conversation = customer_writes()
    channel.visibility = "assigned_only"
    channel.save()
    client = Client()
    login(client, "ben")
    assert client.get(f"/c/{conversation.pk}").status_code == 404
    supervisor = Client()
    login(supervisor, "sora")
    assert supervisor.get(f"/c/{conversation.pk}").status_code == 200


def test_logins_are_throttled_after_repeated_failures(users):
    client = Client()
    for _ in range(django_settings.AXES_FAILURE_LIMIT):
        client.post("/login/", {"username": "aiko", "password": "wrong"})
    response = client.post("/login/", {"username": "aiko", "password": "a-long-test-password-1"})
    assert response.status_code in (403, 429)


def test_passwords_are_hashed_with_argon2_by_default():
    assert madoguchi_settings.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")


def test_the_login_form_is_csrf_protected(users):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "aiko", "password": "a-long-test-password-1"})
    assert response.status_code == 403


def test_the_openapi_document_describes_the_api(server):
    import httpx

    document = httpx.get(f"{server.url}/api/v1/openapi.json", timeout=10).json()
    assert document["info"]["title"] == "Madoguchi API"
    for path in [
        "/api/v1/conversations",
        "/api/v1/conversations/{conversation_id}/messages",
        "/api/v1/conversations/{conversation_id}/claim",
        "/api/v1/conversations/{conversation_id}/assign",
        "/api/v1/templates",
        "/api/v1/channels/{channel_id}/templates/sync",
    ]:
        assert path in document["paths"], path


def test_a_user_chooses_language_and_time_zone(users):
    client = Client()
    login(client, "aiko")
    response = client.post(
        "/settings/save",
        {"language": "ja", "time_zone": "Asia/Tokyo", "notify_sound": "on"},
    )
    assert response.status_code == 302
    users["aiko"].refresh_from_db()
    assert (users["aiko"].language, users["aiko"].time_zone) == ("ja", "Asia/Tokyo")
    assert users["aiko"].notify_sound and not users["aiko"].notify_desktop
    page = client.get("/").content.decode()
    assert "自分の担当" in page and 'data-tz="Asia/Tokyo"' in page


def test_an_unknown_time_zone_is_refused_with_a_message(users):
    client = Client()
    login(client, "aiko")
    client.post("/settings/save", {"language": "en", "time_zone": "Mars/Olympus"})
    users["aiko"].refresh_from_db()
    assert users["aiko"].time_zone == ""


def test_the_browser_language_is_the_default(users):
    client = Client(HTTP_ACCEPT_LANGUAGE="ja,en;q=0.5")
    page = client.get("/login/").content.decode()
    assert "ログイン" in page


def test_a_password_can_be_changed(users):
    client = Client()
    login(client, "aiko")
    response = client.post(
        "/password/",
        {
            "old_password": "a-long-test-password-1",
            "new_password1": "another-long-password-2",
            "new_password2": "another-long-password-2",
        },
    )
    assert response.status_code == 302
    users["aiko"].refresh_from_db()
    assert users["aiko"].check_password("another-long-password-2")


def test_only_supervisors_manage_canned_replies(users):
    from madoguchi.models import CannedReply

    agent = Client()
    login(agent, "aiko")
    agent.post("/settings/canned", {"shortcut": "hi", "text": "Hello!"})
    assert not CannedReply.objects.exists()
    supervisor = Client()
    login(supervisor, "sora")
    supervisor.post("/settings/canned", {"shortcut": "/hi", "text": "Hello!"})
    assert CannedReply.objects.get().shortcut == "hi"


def test_console_refusals_come_back_as_json_for_the_page_script(customer_writes, users):
    conversation = customer_writes()
    client = Client()
    login(client, "ben")
    response = client.post(
        f"/c/{conversation.pk}/send", {"text": "hi"}, HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_assignee"


def test_the_service_worker_is_served_at_the_root(db):
    response = Client().get("/sw.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    assert Client().get("/offline/").status_code == 200


def test_textless_messages_read_in_the_viewers_language():
    from django.utils import translation

    from madoguchi.templatetags.madoguchi import readable

    with translation.override("ja"):
        assert readable("[Voice message]") == "［ボイスメッセージ］"
        assert readable("[Image] is what I typed") == "[Image] is what I typed"  # customer text


def test_channels_without_a_time_window_show_their_own_state(users, viber_channel):
    """A subscribed Viber user has no window to count down; an unsubscribed one cannot be
    messaged. Neither reads "Window closed"."""
    from django.utils import timezone

    from madoguchi.models import Contact, ContactIdentity, Conversation

    for handle, subscribed in (("c3ViCg==", True), ("dW5zdWIK", False)):
        contact = Contact.objects.create(name=f"Viber {handle}")
        identity = ContactIdentity.objects.create(
            contact=contact, channel=viber_channel, handle=handle, subscribed=subscribed
        )
        Conversation.objects.create(
            channel=viber_channel,
            contact=contact,
            identity=identity,
            last_message_at=timezone.now(),
        )
    client = Client()
    login(client, "sora")
    page = client.get("/?view=all").content.decode()
    assert page.count('class="window') == 1
    assert "Not subscribed" in page
    assert "Window closed" not in page
