"""Local file storage for media (under MEDIA_ROOT)."""

from __future__ import annotations

import mimetypes
import uuid


def guess_extension(mime_type: str) -> str:
    return mimetypes.guess_extension(mime_type.split(";")[0].strip()) or ".bin"


def new_media_name(folder: str, mime_type: str) -> str:
    """A fresh relative path for a stored file: ``folder/<random hex><extension>``."""
    return f"{folder}/{uuid.uuid4().hex}{guess_extension(mime_type)}"
