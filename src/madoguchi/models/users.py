"""People: users with a role, and teams."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    SUPERVISOR = "supervisor", "Supervisor"
    AGENT = "agent", "Agent"
    WATCHER = "watcher", "Watcher"  # read-only


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)

    def __str__(self) -> str:
        return self.name


def user_label(display_name: str, first_name: str, last_name: str, username: str) -> str:
    """How a person is named in the console: display name, else full name, else username."""
    return display_name or f"{first_name} {last_name}".strip() or username


class User(AbstractUser):
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.AGENT)
    teams = models.ManyToManyField(Team, related_name="members", blank=True)
    display_name = models.CharField(max_length=150, blank=True)
    language = models.CharField(max_length=8, blank=True)  # "" = from the browser
    time_zone = models.CharField(max_length=64, blank=True)
    notify_sound = models.BooleanField(default=True)
    notify_desktop = models.BooleanField(default=True)

    @property
    def label(self) -> str:
        return user_label(self.display_name, self.first_name, self.last_name, self.username)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def is_supervisor_or_admin(self) -> bool:
        return self.role in (Role.ADMIN, Role.SUPERVISOR)

    @property
    def is_watcher(self) -> bool:
        return self.role == Role.WATCHER


class ApiToken(models.Model):
    """A REST API token. Only a SHA-256 of the token is kept; the token is shown once."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)
