"""Email, for one mailbox: sent over SMTP, received over IMAP (``email_imap``).

Implements, after ``shared/platforms/PROTOCOLS.md`` §D:

- the reading of a raw mail stored by the IMAP receiver (``parse_webhook``: the "webhook body"
  of this channel is one RFC 822 message) into the events of ``base.py``, in ``email_wire``;
- sends over SMTP (``smtplib``) with security ``none`` | ``starttls`` | ``tls``; the answer
  threads with the customer's mail (D1) and its Reply-To routes the next mail back to the
  conversation (D2); the platform id of a sent message is its ``Message-ID``;
- SMTP errors mapped: 4xx transient, 5xx permanent, a lost or refused connection transient;
- ``check_credentials``: a login to the IMAP server and to the SMTP server.

Channel options: ``smtp_host``, ``smtp_port``, ``smtp_security`` (default ``starttls``),
``smtp_username`` (default: the channel's address), ``imap_*`` (see
``email_imap.ImapSettings.from_config``), ``domain`` (of our Message-IDs; default the
address's), ``from_name``, ``subject`` (of a first mail without a thread), ``timeout``,
``tls_verify``. Secrets: ``smtp_password`` and ``imap_password`` (or one ``password``).
"""

from __future__ import annotations

import dataclasses
import smtplib
import ssl
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils.translation import gettext as _

from madoguchi.errors import Invalid

from . import email_wire as wire
from .base import (
    Capabilities,
    InboundEvent,
    MediaRef,
    MediaTooLarge,
    PlatformError,
    Provider,
    ReceiveSink,
    SendContext,
    SendError,
    SentMessage,
    StoredMedia,
)


def is_message_id(value: str) -> bool:
    return bool(wire.MESSAGE_ID_RE.fullmatch(value))


class MailboxReceiver:
    """Adapts ``ImapReceiver`` to the core's receiver protocol: raw mails and plain-dict
    states to the sink."""

    def __init__(self, settings: Any, state: dict[str, Any], sink: ReceiveSink) -> None:
        from .email_imap import ImapReceiver, MailboxState

        self.sink = sink
        uidvalidity = state.get("uidvalidity")
        self.state = MailboxState(
            uidvalidity=int(uidvalidity) if uidvalidity is not None else None,
            last_uid=int(state.get("last_uid") or 0),
        )
        self.imap = ImapReceiver(settings, self.store, save_state=self.save_state)

    @staticmethod
    def as_dict(state: Any) -> dict[str, Any]:
        return {"uidvalidity": state.uidvalidity, "last_uid": state.last_uid}

    def store(self, mail: Any, state: Any) -> None:
        self.sink.store(mail.raw, self.as_dict(state))

    def save_state(self, state: Any) -> None:
        self.sink.save_state(self.as_dict(state))

    def run(self, stop: threading.Event) -> None:
        self.state = self.imap.run(self.state, stop)


# Most providers refuse mail above 25 MB; base64 makes attachments a third larger on the wire.
MAX_ATTACHMENT_BYTES = 18 * 1024 * 1024
NETWORK_ERROR_CODE = -1


def classify_smtp_error(exc: BaseException) -> SendError:
    """A SendError for what smtplib raised: 5xx permanent, 4xx transient (421 holds the whole
    mailbox, a 4xx refusal of the recipient only that recipient), a connection that failed or
    dropped transient, a refused certificate or a server without STARTTLS permanent."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (550, b""))
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return SendError(
            PlatformError(code=code, title="Recipient refused", details=text),
            permanent=code >= 500,
            scope="pair",
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code = int(exc.smtp_code)
        reply = exc.smtp_error
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        title = {
            smtplib.SMTPAuthenticationError: "Login refused by the mail server",
            smtplib.SMTPSenderRefused: "Sender refused",
            smtplib.SMTPDataError: "Message refused",
        }.get(type(exc), "Mail server error")
        if code == 421:  # "service not available, closing channel": the server is busy
            return SendError(PlatformError(code, title, text), permanent=False, scope="number")
        return SendError(PlatformError(code, title, text), permanent=code >= 500)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return SendError(
            PlatformError(NETWORK_ERROR_CODE, "The mail server does not offer this", str(exc)),
            permanent=True,
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SendError(
            PlatformError(NETWORK_ERROR_CODE, "Mail server certificate refused", str(exc)),
            permanent=True,
        )
    # SMTPServerDisconnected, SMTPConnectError's OSError relatives, timeouts, refused sockets.
    return SendError(
        PlatformError(NETWORK_ERROR_CODE, "Mail server unreachable", type(exc).__name__),
        permanent=False,
    )


class EmailProvider(Provider):
    kind = "email"
    capabilities = Capabilities(
        has_templates=False,
        window_hours=None,
        read_receipts=False,
        max_text_length=100_000,
        caption_kinds=frozenset({"image", "audio", "video", "document", "sticker"}),
        has_webhooks=False,
        threads_in_messages=True,
    )

    # -- settings --------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.config.business_handle.lower()

    @property
    def domain(self) -> str:
        return str(self.config.options.get("domain") or self.address.rpartition("@")[2])

    @property
    def timeout(self) -> float:
        return float(self.config.options.get("timeout", 30))

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.config.options.get("tls_verify", True):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def smtp_session(self) -> smtplib.SMTP:
        """A connected (and, with a password, logged-in) SMTP session. Raises smtplib / OSError
        exceptions; callers classify them."""
        options = self.config.options
        security = str(options.get("smtp_security", "starttls"))
        if security not in ("none", "starttls", "tls"):
            raise SendError(
                PlatformError(NETWORK_ERROR_CODE, "smtp_security must be none, starttls or tls"),
                permanent=True,
            )
        host = str(options.get("smtp_host", ""))
        port = int(options.get("smtp_port", {"tls": 465, "starttls": 587}.get(security, 25)))
        session: smtplib.SMTP
        if security == "tls":
            session = smtplib.SMTP_SSL(host, port, timeout=self.timeout, context=self.tls_context())
        else:
            session = smtplib.SMTP(host, port, timeout=self.timeout)
        try:
            session.ehlo()
            if security == "starttls":
                session.starttls(context=self.tls_context())
                session.ehlo()
            password = self.config.secrets.get("smtp_password") or self.config.secrets.get(
                "password", ""
            )
            if password:
                session.login(str(options.get("smtp_username") or self.address), password)
        except BaseException:
            session.close()
            raise
        return session

    def deliver(self, msg: EmailMessage, to: str) -> SentMessage:
        """Send ``msg`` to ``to`` with our address as the envelope sender (so bounces come back
        to the mailbox the receiver reads). Returns its Message-ID as the platform id."""
        try:
            session = self.smtp_session()
            try:
                session.send_message(msg, from_addr=self.address, to_addrs=[to])
            finally:
                try:
                    session.quit()
                except (smtplib.SMTPException, OSError):
                    session.close()
        except SendError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise classify_smtp_error(exc) from None
        return SentMessage(platform_message_id=str(msg["Message-ID"]), recipient_handle=to)

    def thread_for(
        self,
        reply_to: str | None,
        thread: wire.Thread | None,
        context: SendContext | None = None,
    ) -> wire.Thread:
        """The thread of a send: the one given, else one built from the core's context, else
        from the replied-to Message-ID (an attachment's platform id ``<id>#n`` answers its
        mail ``<id>``)."""
        if thread is not None:
            return thread
        if context is not None:
            return self.thread_from_context(context, reply_to)
        parent = (reply_to or "").split("#", 1)[0]
        return wire.Thread(
            subject=str(self.config.options.get("subject", "")), parent_message_id=parent
        )

    def thread_from_context(self, context: SendContext, reply_to: str | None) -> wire.Thread:
        """D1/D2 from the conversation: the mail answered is the one the agent quoted, else the
        customer's latest mail; In-Reply-To is its Message-ID; References its own References
        (or its single In-Reply-To) then its id, or, when its client sent none, the
        conversation's mails up to it; the subject is "Re: " + the customer's; the
        conversation key becomes the Reply-To plus-address and part of our Message-ID."""
        mails = [
            entry
            for entry in context.history
            if is_message_id(entry.platform_message_id.split("#", 1)[0])
        ]
        inbound = [e for e in mails if e.direction == "in" and e.data.get("message_id")]
        wanted = (reply_to or context.reply_to or "").split("#", 1)[0]
        parent = next(
            (e for e in reversed(inbound) if e.platform_message_id == wanted),
            inbound[-1] if inbound else None,
        )
        token = context.conversation_key if wire.TOKEN_RE.match(context.conversation_key) else ""
        subject = ""
        for entry in ([parent] if parent else []) + inbound[::-1]:
            subject = str(entry.data.get("subject") or "")
            if subject:
                break
        if parent is None:
            return wire.Thread(token=token, subject=subject)
        references = tuple(str(r) for r in parent.data.get("references") or ())
        in_reply_to = tuple(str(r) for r in parent.data.get("in_reply_to") or ())
        if not references and len(in_reply_to) != 1:
            # The customer's client sent no thread: the conversation's own mails stand in.
            ids: list[str] = []
            for entry in mails:
                if entry is parent:
                    break
                ids.append(entry.platform_message_id.split("#", 1)[0])
            references = tuple(dict.fromkeys(ids))
        return wire.Thread(
            token=token,
            subject=subject,
            parent_message_id=parent.platform_message_id,
            parent_references=references,
            parent_in_reply_to=in_reply_to,
        )

    def compose(
        self,
        to: str,
        text: str,
        thread: wire.Thread,
        attachments: list[wire.OutboundAttachment] | None = None,
    ) -> EmailMessage:
        subject = thread.subject or str(self.config.options.get("subject", ""))
        if not subject:
            subject = _("Message from %(name)s") % {
                "name": self.config.options.get("from_name") or self.address
            }
        return wire.compose_message(
            from_address=self.address,
            from_name=str(self.config.options.get("from_name", "")),
            to=to,
            text=text,
            thread=thread if thread.subject else dataclasses.replace(thread, subject=subject),
            domain=self.domain,
            attachments=attachments or (),
        )

    # -- inbound ---------------------------------------------------------------------------
    def verify_signature(self, headers: dict[str, str], body: bytes) -> bool:
        """Email has no webhooks: nothing posted to a webhook URL is ever ours."""
        return False

    def parse_webhook(self, body: bytes) -> list[InboundEvent]:
        """``body``: one raw mail as the IMAP receiver stored it. Raises EmailParseError."""
        return list(self.parse_mail(body).events)

    def parse_mail(self, body: bytes) -> wire.ParsedEmail:
        return wire.parse_message(body, business_handle=self.address, our_domain=self.domain)

    def receiver(self, state: dict[str, Any], sink: ReceiveSink) -> MailboxReceiver:
        """The IMAP receiver of this mailbox (``email_imap``), from ``state`` ({"uidvalidity",
        "last_uid"}; {} the first time: it starts from now, see ImapSettings.from_config)."""
        from .email_imap import ImapSettings

        return MailboxReceiver(ImapSettings.from_config(self.config), state, sink)

    def fetch_media(self, media: MediaRef, destination: str, *, kind: str = "") -> StoredMedia:
        """Never needed: attachments come with their bytes (``MediaRef.content``) and are
        stored when the mail is processed. A permanent error for anything else."""
        raise SendError(
            PlatformError(NETWORK_ERROR_CODE, "Email attachments are stored with their mail"),
            permanent=True,
        )

    def store_attachment(
        self, raw: bytes, media: MediaRef, destination: str, *, kind: str = ""
    ) -> StoredMedia:
        """Write the attachment ``media`` of the stored raw mail ``raw`` to
        MEDIA_ROOT/destination (email attachments travel inside the mail: there is nothing to
        download). MediaTooLarge past the limit; EmailParseError when it is not in ``raw``."""
        item = wire.extract_attachment(raw, media.platform_media_id)
        limit = self.media_limit(kind, item.mime_type)
        if len(item.content) > limit:
            raise MediaTooLarge(f"{len(item.content)} bytes > {limit}")
        target = Path(settings.MEDIA_ROOT) / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.content)
        return StoredMedia(path=destination, mime_type=item.mime_type, size=len(item.content))

    # -- set-up ----------------------------------------------------------------------------
    def check_credentials(self) -> dict[str, str]:
        """Log in to the IMAP server (and select the folder) and to the SMTP server."""
        from imapclient.exceptions import LoginError

        from .email_imap import CONNECTION_ERRORS, ImapSettings, close, connect

        imap = ImapSettings.from_config(self.config)
        client = None
        try:
            client = connect(imap)
            client.select_folder(imap.folder, readonly=True)
        except LoginError as exc:
            raise SendError(
                PlatformError(535, "Login refused by the IMAP server", str(exc)), permanent=True
            ) from None
        except CONNECTION_ERRORS as exc:
            raise SendError(
                PlatformError(NETWORK_ERROR_CODE, "IMAP server unreachable", str(exc)),
                permanent=False,
            ) from None
        finally:
            close(client)
        try:
            session = self.smtp_session()
            session.quit()
        except SendError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise classify_smtp_error(exc) from None
        return {"name": self.address}

    # -- outbound --------------------------------------------------------------------------
    def send_text(
        self,
        to: str,
        text: str,
        *,
        reply_to: str | None = None,
        tag: str | None = None,
        context: SendContext | None = None,
        thread: wire.Thread | None = None,
    ) -> SentMessage:
        """Send ``text`` to ``to``, threaded after ``context`` (the core's), or ``thread``
        (given directly: routing token, subject and the mail answered); with neither,
        ``reply_to`` is the mail answered."""
        msg = self.compose(to, text, self.thread_for(reply_to, thread, context))
        return self.deliver(msg, to)

    def send_media(
        self,
        to: str,
        kind: str,
        path: str,
        mime_type: str,
        *,
        filename: str = "",
        caption: str = "",
        reply_to: str | None = None,
        tag: str | None = None,
        context: SendContext | None = None,
        thread: wire.Thread | None = None,
    ) -> SentMessage:
        """Send the file at MEDIA_ROOT/path as an attachment, ``caption`` as the text; threaded
        as send_text."""
        full = Path(settings.MEDIA_ROOT) / path
        content = full.read_bytes()
        attachment = wire.OutboundAttachment(filename or full.name, mime_type, content)
        msg = self.compose(to, caption, self.thread_for(reply_to, thread, context), [attachment])
        return self.deliver(msg, to)

    # -- rules -----------------------------------------------------------------------------
    @classmethod
    def normalize_handle(cls, raw: str) -> str:
        """A lower-cased mail address. ``email-validator`` checks the syntax (RFC 5322/6531,
        internationalised domains to IDNA), which the stdlib's ``parseaddr`` does not: it
        accepts nearly any string. No DNS lookup here (no network in the core's checks)."""
        from email_validator import EmailNotValidError, validate_email

        try:
            result = validate_email(raw.strip(), check_deliverability=False)
        except EmailNotValidError:
            raise Invalid(
                _("Not an email address: give it as name@example.com."),
                code="invalid_email_address",
            ) from None
        # Inbound senders are lower-cased too: one customer, one identity.
        return result.normalized.lower()

    @classmethod
    def media_limit(cls, kind: str, mime_type: str) -> int:
        return MAX_ATTACHMENT_BYTES

    @classmethod
    def explain_error(cls, error: PlatformError) -> str:
        if error.code == NETWORK_ERROR_CODE:
            return error.title
        return f"{error.title} ({error.code}): {error.details}".strip()
