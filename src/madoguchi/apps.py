from __future__ import annotations

from django.apps import AppConfig


class MadoguchiConfig(AppConfig):
    name = "madoguchi"
    verbose_name = "Madoguchi"
    default_auto_field = "django.db.models.BigAutoField"
