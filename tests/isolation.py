"""Loaded with ``-p tests.isolation`` (pyproject's addopts), before pytest-django configures
Django: every test run gets its own data directory (secret key, media, the SQLite test
database), so runs side by side never share or delete each other's files."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MADOGUCHI_DATA_DIR", tempfile.mkdtemp(prefix="madoguchi-test-"))
