"""Channels (inboxes): one connected business account on one platform."""

from __future__ import annotations

from django.db import models

from .users import Team


class Visibility(models.TextChoices):
    ALL = "all", "Everyone"
    TEAM = "team", "Team members"
    ASSIGNED_ONLY = "assigned_only", "Assignee only"


class Channel(models.Model):
    kind = models.CharField(max_length=16)  # a key of providers.registry.PROVIDERS
    name = models.CharField(max_length=100)
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default="all")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL)
    # The platform's ids of this account. WhatsApp: phone_number_id / WABA id / display number.
    business_handle = models.CharField(max_length=64, db_index=True)
    account_handle = models.CharField(max_length=64, blank=True)
    display_handle = models.CharField(max_length=64, blank=True)
    # Scheme, host and port replacing the platform's own (simulators, proxies); "" = default.
    api_base = models.CharField(max_length=200, blank=True)
    # Secrets (tokens, app secret, verify token). Never logged, never shown after saving.
    secrets = models.JSONField(default=dict)
    # Non-secret settings of the provider (e.g. Messenger's human_agent_tag, Viber's sender name
    # and welcome text, an email channel's hosts, ports and security).
    options = models.JSONField(default=dict, blank=True)
    # Where a polled channel (email) stopped reading: written in the same transaction as the
    # bodies it read, so a restart neither loses nor repeats one.
    receive_state = models.JSONField(default=dict, blank=True)
    outbound_mps = models.PositiveIntegerField(default=80)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def __repr__(self) -> str:  # secrets stay out of reprs, logs and tracebacks
        return f"<Channel {self.pk} {self.kind} {self.name!r}>"

    @property
    def webhook_path(self) -> str:
        return f"/webhooks/{self.kind}/{self.pk}"


class Template(models.Model):
    """A message template synced from the platform (WhatsApp)."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="templates")
    platform_id = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=512)
    language = models.CharField(max_length=16)
    status = models.CharField(max_length=32)
    category = models.CharField(max_length=32, blank=True)
    parameter_format = models.CharField(max_length=16, default="POSITIONAL")
    components = models.JSONField(default=list)
    status_reason = models.CharField(max_length=200, blank=True)
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "name", "language"], name="template_unique_per_language"
            )
        ]

    @property
    def is_sendable(self) -> bool:
        return self.status == "APPROVED"
