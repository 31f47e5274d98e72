"""Madoguchi's one settings file: safe defaults, strict parsing of the environment.

Environment (SPEC §4): MADOGUCHI_DATA_DIR, DATABASE_URL, REDIS_URL, MADOGUCHI_SECRET_KEY,
MADOGUCHI_DEBUG, MADOGUCHI_PUBLIC_URL. Anything malformed stops start-up with a clear message
instead of running with a surprising value.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

PACKAGE_DIR = Path(__file__).resolve().parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None


def database_from_url(url: str, data_dir: Path) -> dict:
    """DATABASES["default"] for a sqlite:/// or postgres:// URL (psycopg 3 with a pool)."""
    if not url:
        path = data_dir / "madoguchi.sqlite3"
        return sqlite_database(path)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:////absolute/path or sqlite:///relative/path
        raw_path = unquote(parts.path)
        if raw_path.startswith("//"):
            raw_path = raw_path[1:]
        elif raw_path.startswith("/"):
            raw_path = raw_path[1:]
        if not raw_path:
            raise ImproperlyConfigured("DATABASE_URL sqlite:/// needs a file path")
        return sqlite_database(Path(raw_path))
    if parts.scheme in {"postgres", "postgresql"}:
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        pool_max = int(query.pop("pool_max", env_int("MADOGUCHI_DB_POOL_MAX", 10)))
        pool_min = int(query.pop("pool_min", 1))
        config: dict = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "madoguchi",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            # Under ASGI every request may run in a different thread: persistent connections
            # (CONN_MAX_AGE) pile up until the server refuses clients. A bounded pool does not.
            "CONN_MAX_AGE": 0,
            "OPTIONS": {
                "pool": {"min_size": pool_min, "max_size": pool_max, "timeout": 10},
                **query,
            },
        }
        return config
    raise ImproperlyConfigured(
        f"DATABASE_URL must start with sqlite:/// or postgres://, not {parts.scheme!r}"
    )


def sqlite_database(path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # WAL lets readers work while one writer commits; IMMEDIATE takes the write lock at
            # BEGIN so two writers queue on busy_timeout instead of failing on lock upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
            ),
        },
        # Tests share one file database between the test thread, the live server thread and
        # worker subprocesses; an in-memory test database would not be shared.
        "TEST": {"NAME": str(path.with_name(path.stem + "-test.sqlite3"))},
    }


DATA_DIR = Path(os.environ.get("MADOGUCHI_DATA_DIR", "./madoguchi-data")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
DEBUG = env_bool("MADOGUCHI_DEBUG", False)


def load_secret_key() -> str:
    """MADOGUCHI_SECRET_KEY, else a random key kept in the data directory (mode 0600)."""
    configured = os.environ.get("MADOGUCHI_SECRET_KEY", "")
    if configured:
        if len(configured) < 32:
            raise ImproperlyConfigured("MADOGUCHI_SECRET_KEY must be at least 32 characters")
        return configured
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = load_secret_key()
PUBLIC_URL = os.environ.get("MADOGUCHI_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
_public = urlsplit(PUBLIC_URL)
if _public.scheme not in {"http", "https"} or not _public.hostname:
    raise ImproperlyConfigured("MADOGUCHI_PUBLIC_URL must be an http(s) URL")

ALLOWED_HOSTS = [
    h for h in os.environ.get("MADOGUCHI_ALLOWED_HOSTS", "").split(",") if h.strip()
] or [_public.hostname, "127.0.0.1", "localhost"]
CSRF_TRUSTED_ORIGINS = [f"{_public.scheme}://{_public.netloc}"]

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL and not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise ImproperlyConfigured("REDIS_URL must start with redis://, rediss:// or unix://")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "madoguchi",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "madoguchi.views.console.middleware.UserPreferencesMiddleware",
    "madoguchi.views.api.ApiErrorShape",
]

ROOT_URLCONF = "madoguchi.urls"
ASGI_APPLICATION = "madoguchi.asgi.application"
AUTH_USER_MODEL = "madoguchi.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
            ]
        },
    }
]

DATABASES = {"default": database_from_url(os.environ.get("DATABASE_URL", ""), DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Real-time events do not use a channel layer: realtime.publish delivers each event once per
# process (through Redis when REDIS_URL is set), whatever the number of recipients.
CHANNEL_LAYERS: dict = {}

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("MADOGUCHI_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

_secure = _public.scheme == "https"
SESSION_COOKIE_SECURE = _secure
CSRF_COOKIE_SECURE = _secure
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("MADOGUCHI_SESSION_AGE", 12 * 3600)
SESSION_SAVE_EVERY_REQUEST = False
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

LANGUAGE_CODE = "en"
LANGUAGES = [("ja", "日本語"), ("en", "English")]
LOCALE_PATHS = [PACKAGE_DIR / "locale"]
USE_I18N = True
TIME_ZONE = "UTC"
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
MEDIA_ROOT = DATA_DIR / "media"

# Webhook bodies: WhatsApp says payloads are "up to 3 MB"; anything larger is refused (413).
WEBHOOK_MAX_BYTES = env_int("MADOGUCHI_WEBHOOK_MAX_BYTES", 3 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 110 * 1024 * 1024  # outbound media up to WhatsApp's 100 MB
# Graph API version used for WhatsApp calls; the base URL is per channel (--api-base).
WHATSAPP_GRAPH_VERSION = os.environ.get("MADOGUCHI_WHATSAPP_GRAPH_VERSION", "v23.0")
# Outbound throughput cap per business number (messages per second); WhatsApp's default is 80.
OUTBOUND_DEFAULT_MPS = env_int("MADOGUCHI_OUTBOUND_MPS", 80)
# How much of a second's throughput that went unused may be made up at once (tasks.
# reserve_send_slots); WhatsApp's limit is per second, and 0 paces strictly.
PACING_BURST_SECONDS = float(os.environ.get("MADOGUCHI_PACING_BURST_SECONDS", "0.25"))
HTTP_TIMEOUT_SECONDS = float(os.environ.get("MADOGUCHI_HTTP_TIMEOUT", "15"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("MADOGUCHI_LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
    },
}

# The durable queue (madoguchi.worker): how long a claimed job or raw event stays ours before
# another worker may take it (longer than any platform call), retry pacing and limits.
JOB_LEASE_SECONDS = float(os.environ.get("MADOGUCHI_JOB_LEASE_SECONDS", "60"))
MADOGUCHI_RETRY_BASE_SECONDS = float(os.environ.get("MADOGUCHI_RETRY_BASE_SECONDS", "2"))
MADOGUCHI_SEND_MAX_ATTEMPTS = env_int("MADOGUCHI_SEND_MAX_ATTEMPTS", 8)
WORKER_POLL_SECONDS = float(os.environ.get("MADOGUCHI_WORKER_POLL_SECONDS", "0.5"))
# Server and worker processes freeze what exists at start-up and what survives a full garbage
# collection, and walk every object only this often (madoguchi.gcpolicy); 0 keeps CPython's own
# policy.
GC_FULL_SECONDS = float(os.environ.get("MADOGUCHI_GC_FULL_SECONDS", "3600"))
TEMPLATE_SYNC_INTERVAL_SECONDS = env_int("MADOGUCHI_TEMPLATE_SYNC_INTERVAL", 3600)
PAIR_RETRY_BASE_SECONDS = float(os.environ.get("MADOGUCHI_PAIR_RETRY_BASE_SECONDS", "1"))
# A send interrupted after its platform call (a worker killed before the answer was recorded) is
# retried only after this long without a receipt naming it, on platforms that echo a send's
# reference (WhatsApp): the receipt says whether the killed attempt went (tasks.awaiting_receipt).
SEND_RECONCILE_SECONDS = float(os.environ.get("MADOGUCHI_SEND_RECONCILE_SECONDS", "15"))
