"""What each channel kind needs to be set up: one table read by the CLI (``madoguchi channel add
<kind>``, SPEC §4), the console's set-up page and the set-up action.

Each field says where its value is stored: one of the channel's handles, its ``api_base``, a
secret (``Channel.secrets``: never shown again after saving) or an option (``Channel.options``:
non-secret settings the provider reads). The CLI flag of a field is its name with dashes
(``page_access_token`` -> ``--page-access-token``); fields with ``cli=False`` are set in the
console only.

This module is pure data (no ORM, no settings at import time): the CLI reads it to build its
argument parser before Django is set up. Labels are lazy translations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from django.utils.translation import gettext_lazy as _l

from madoguchi.errors import Invalid

Target = Literal[
    "business_handle", "account_handle", "display_handle", "api_base", "secret", "option"
]
FieldType = Literal["text", "secret", "port", "bool", "choice", "url", "email", "textarea"]


@dataclass(frozen=True)
class SetupField:
    name: str
    label: Any  # a lazy translation
    target: Target
    type: FieldType = "text"
    required: bool = False
    key: str = ""  # the secret's or option's key(s), space-separated; default: ``name``
    choices: tuple[str, ...] = ()
    default: Any = None
    cli: bool = True  # a flag of ``madoguchi channel add``
    help: Any = ""

    @property
    def store_keys(self) -> tuple[str, ...]:
        return tuple((self.key or self.name).split())

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def editable(self) -> bool:
        """Whether it may change after creation (the account's ids may not: they name it)."""
        return self.target in ("api_base", "secret", "option")


@dataclass(frozen=True)
class KindSetup:
    kind: str
    label: str  # the platform's own name, not translated
    fields: tuple[SetupField, ...]
    # Whether a channel can be saved without asking the platform first (``--no-check``):
    # false where the platform's answer is needed (Viber: the bot id, the webhook).
    offline_ok: bool = True
    # Where to go to register the webhook URL when Madoguchi cannot do it itself.
    dashboard_hint: Any = ""

    def field(self, name: str) -> SetupField:
        return next(f for f in self.fields if f.name == name)


API_BASE = SetupField(
    "api_base",
    _l("API base URL"),
    "api_base",
    type="url",
    help=_l("Only to use a simulator or a proxy instead of the platform."),
)

SETUP: dict[str, KindSetup] = {
    "whatsapp": KindSetup(
        "whatsapp",
        "WhatsApp",
        (
            SetupField("phone_number_id", _l("Phone number ID"), "business_handle", required=True),
            SetupField(
                "waba_id", _l("WhatsApp Business Account ID"), "account_handle", required=True
            ),
            SetupField("display_phone_number", _l("Display phone number"), "display_handle"),
            SetupField("access_token", _l("Access token"), "secret", "secret", required=True),
            SetupField("app_secret", _l("App secret"), "secret", "secret", required=True),
            SetupField("verify_token", _l("Verify token"), "secret", "secret", required=True),
            API_BASE,
        ),
        dashboard_hint=_l(
            "Register this URL and the verify token in the Meta app dashboard (WhatsApp > "
            "Configuration)."
        ),
    ),
    "viber": KindSetup(
        "viber",
        "Viber",
        (
            SetupField("auth_token", _l("Authentication token"), "secret", "secret", required=True),
            API_BASE,
            SetupField(
                "sender_name",
                _l("Sender name (up to 28 characters)"),
                "option",
                cli=False,
                help=_l("The name customers see on every message."),
            ),
            SetupField("welcome_text", _l("Welcome message"), "option", "textarea", cli=False),
            SetupField(
                "media_base_url",
                _l("Public URL of outbound media"),
                "option",
                "url",
                cli=False,
                help=_l("Viber downloads the files agents send from this public address."),
            ),
        ),
        offline_ok=False,
    ),
    "messenger": KindSetup(
        "messenger",
        "Messenger",
        (
            SetupField("page_id", _l("Facebook Page ID"), "business_handle", required=True),
            SetupField(
                "page_access_token", _l("Page access token"), "secret", "secret", required=True
            ),
            SetupField("app_secret", _l("App secret"), "secret", "secret", required=True),
            SetupField("verify_token", _l("Verify token"), "secret", "secret", required=True),
            SetupField(
                "human_agent_tag",
                _l("The page may use the HUMAN_AGENT tag (answers up to 7 days)"),
                "option",
                "bool",
                default=False,
            ),
            API_BASE,
        ),
        dashboard_hint=_l(
            "Register this URL and the verify token in the Meta app dashboard (Messenger > "
            "Webhooks), subscribed to the page's messages, postbacks, deliveries, reads and "
            "echoes."
        ),
    ),
    "email": KindSetup(
        "email",
        "Email",
        (
            SetupField("address", _l("Email address"), "business_handle", "email", required=True),
            SetupField("imap_host", _l("IMAP server"), "option", required=True),
            SetupField("imap_port", _l("IMAP port"), "option", "port", required=True),
            SetupField(
                "imap_user", _l("IMAP user name"), "option", key="imap_username", required=True
            ),
            SetupField("imap_password", _l("IMAP password"), "secret", "secret", required=True),
            SetupField("smtp_host", _l("SMTP server"), "option", required=True),
            SetupField("smtp_port", _l("SMTP port"), "option", "port", required=True),
            SetupField(
                "smtp_user",
                _l("SMTP user name"),
                "option",
                key="smtp_username",
                help=_l("Leave empty to use the email address."),
            ),
            SetupField(
                "smtp_password",
                _l("SMTP password"),
                "secret",
                "secret",
                help=_l("Leave empty if the server accepts mail without a login."),
            ),
            # One setting for both servers (SPEC §4: ``--security``).
            SetupField(
                "security",
                _l("Connection security"),
                "option",
                "choice",
                key="imap_security smtp_security",
                choices=("tls", "starttls", "none"),
                default="tls",
            ),
            SetupField(
                "imap_start",
                _l("First mail to read"),
                "option",
                "choice",
                choices=("new", "unseen", "all"),
                default="new",
                cli=False,
                help=_l(
                    "new: only mail arriving after set-up; unseen: also mail not read yet; "
                    "all: the whole mailbox."
                ),
            ),
        ),
    ),
}


@dataclass
class SetupValues:
    """Field values sorted into where a channel keeps them."""

    business_handle: str = ""
    account_handle: str = ""
    display_handle: str = ""
    api_base: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def kind_setup(kind: str) -> KindSetup:
    try:
        return SETUP[kind]
    except KeyError:
        raise Invalid(
            str(_l("Unknown channel kind %(kind)s.")) % {"kind": kind}, code="invalid_kind"
        ) from None


def is_http_url(text: str) -> bool:
    """An http(s) URL with a host (and a valid port, if any), nothing else."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and text.isascii()
        and not any(c.isspace() for c in text)
    )


def clean_value(spec: SetupField, raw: Any) -> Any:
    """One field's value, typed; "" (or False) for an empty one. Raises Invalid."""
    if spec.type == "bool":
        return raw in (True, "on", "true", "1", "yes")
    text = "" if raw is None else str(raw).strip()
    if spec.type == "secret":
        text = str(raw or "")  # a secret is taken as typed, spaces included
    if not text:
        return ""
    invalid = Invalid(
        str(_l("%(field)s is not valid.")) % {"field": spec.label},
        code="invalid_field",
        field=spec.name,
    )
    if spec.type == "port":
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
            raise invalid
        return int(text)
    if spec.type == "choice" and text not in spec.choices:
        raise invalid
    if spec.type == "url" and not is_http_url(text):
        raise invalid
    if spec.type == "email" and ("@" not in text or " " in text):
        raise invalid
    if len(text) > (4096 if spec.type in ("secret", "textarea") else 200):
        raise invalid
    return text


def sort_values(
    kind: str, values: Mapping[str, Any], *, only_editable: bool = False
) -> SetupValues:
    """Check ``values`` (field name -> raw value, as typed in a form or on the command line)
    against the kind's table and sort them by target. With ``only_editable`` (an edit of an
    existing channel), only editable fields present in ``values`` are read, nothing is
    required, and an empty secret means "keep the current one" (left out of ``secrets``).
    Raises Invalid (codes ``missing_field``, ``invalid_field``) naming the field."""
    setup = kind_setup(kind)
    result = SetupValues()
    for spec in setup.fields:
        if only_editable and (not spec.editable or spec.name not in values):
            continue
        value = clean_value(spec, values.get(spec.name))
        if value in ("", None) and spec.default is not None and not only_editable:
            value = spec.default
        if spec.required and value in ("", None) and not only_editable:
            raise Invalid(
                str(_l("%(field)s is required.")) % {"field": spec.label},
                code="missing_field",
                field=spec.name,
            )
        if spec.target == "secret":
            if value:
                result.secrets.update(dict.fromkeys(spec.store_keys, value))
        elif spec.target == "option":
            result.options.update(dict.fromkeys(spec.store_keys, value))
        else:
            setattr(result, spec.target, value)
    return result
