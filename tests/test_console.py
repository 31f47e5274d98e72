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
