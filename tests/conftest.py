"""Shared fixtures: named users, a live ASGI server, the WhatsApp simulator, a worker."""

from __future__ import annotations

import os
import tempfile

# Every test run gets its own data directory (secret key, media, SQLite files).
os.environ.setdefault("MADOGUCHI_DATA_DIR", tempfile.mkdtemp(prefix="madoguchi-test-"))
os.environ.setdefault("MADOGUCHI_RETRY_BASE_SECONDS", "0.05")
os.environ.setdefault("MADOGUCHI_JOB_LEASE_SECONDS", "30")

pytest_plugins = ["tests.helpers"]
