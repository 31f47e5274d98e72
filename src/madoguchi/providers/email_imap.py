"""The email channel's IMAP receiver: a plain class that the worker runs in a loop.

Follows ``/work/shared/platforms/PROTOCOLS.md`` §D3 (RFC 3501, RFC 2177):

- one connection, one selected folder; ``UIDVALIDITY`` and the last UID read are the state;
- on every wake-up ``UID SEARCH UID <last+1>:*`` then ``UID FETCH (BODY.PEEK[] INTERNALDATE)``
  in UID order, in batches; ``BODY.PEEK`` leaves the ``\\Seen`` flag as the customer's
  mailbox had it;
- each raw mail is handed to the ``store`` callback together with the state that includes it,
  so that the core writes the mail and the state in one transaction: a crash between two mails
  re-reads only what was not committed (nothing lost, nothing doubled);
- a changed ``UIDVALIDITY`` means the UIDs mean nothing any more: the folder is read again from
  the start, and the core's unique Message-ID stops the duplicates;
- ``IDLE`` when the server lists it, re-issued every 29 minutes (RFC 2177), polling otherwise;
- any lost connection (server restart, network) is re-opened with exponential backoff.

IMAP library: ``IMAPClient`` (maintained, BSD): it has IDLE with a timeout (the stdlib's
``imaplib`` gains IDLE only in Python 3.14), parses FETCH/SELECT answers into Python values
and is synchronous like the worker; ``aioimaplib`` would need an event loop for one socket.
"""

from __future__ import annotations

import imaplib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from madoguchi.providers.base import ChannelConfig

logger = logging.getLogger(__name__)

Security = Literal["none", "starttls", "tls"]
StartFrom = Literal["all", "new", "unseen"]
RFC2177_IDLE_SECONDS = 29 * 60

# What a dead or unreachable server raises through IMAPClient.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    IMAPClientError,
    imaplib.IMAP4.error,
    OSError,
    EOFError,
)


@dataclass(frozen=True)
class ImapSettings:
    """Where and how to read one mailbox. ``idle_seconds``: how long one IDLE lasts before it
    is re-issued; ``poll_seconds``: the pause between two checks without IDLE (and the
    longest a stop request waits while polling); ``tick``: how often a long IDLE looks at the
    stop request."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    security: Security = "tls"
    folder: str = "INBOX"
    timeout: float = 30.0
    use_idle: bool = True
    idle_seconds: float = RFC2177_IDLE_SECONDS
    poll_seconds: float = 60.0
    tick: float = 1.0
    batch_size: int = 50
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    verify_tls: bool = True
    # Where a first connection (no state yet) starts: "all" the folder holds, only mail that
    # arrives from now on ("new": UIDNEXT), or from the first unseen mail on ("unseen").
    start: StartFrom = "all"

    @classmethod
    def from_config(cls, config: ChannelConfig) -> ImapSettings:
        """From a channel: options ``imap_host``, ``imap_port``, ``imap_security``,
        ``imap_username`` (default: the channel's address), ``imap_folder``,
        ``imap_poll_seconds``, ``imap_idle_seconds``, ``imap_use_idle``, ``tls_verify``,
        ``imap_start``; secret
        ``imap_password`` (or ``password``).

        A channel starts from now by default (``imap_start`` "new"): connecting a helpdesk to
        a mailbox that already holds years of mail must not turn that history into open
        conversations; "unseen" also takes the mail nobody has read yet, "all" everything."""
        options = config.options
        security = str(options.get("imap_security", "tls"))
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"imap_security must be none, starttls or tls, not {security!r}")
        start = str(options.get("imap_start", "new"))
        if start not in ("all", "new", "unseen"):
            raise ValueError(f"imap_start must be all, new or unseen, not {start!r}")
        default_port = 993 if security == "tls" else 143
        return cls(
            host=str(options.get("imap_host", "")),
            port=int(options.get("imap_port", default_port)),
            username=str(options.get("imap_username") or config.business_handle),
            password=config.secrets.get("imap_password") or config.secrets.get("password", ""),
            security=security,  # type: ignore[arg-type]
            folder=str(options.get("imap_folder", "INBOX")),
            poll_seconds=float(options.get("imap_poll_seconds", 60)),
            # Shorter than RFC 2177's 29 minutes where a NAT or firewall drops quiet sockets.
            idle_seconds=float(options.get("imap_idle_seconds", RFC2177_IDLE_SECONDS)),
            use_idle=bool(options.get("imap_use_idle", True)),
            verify_tls=bool(options.get("tls_verify", True)),
            start=start,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class MailboxState:
    """What has been read of a folder: persist it with the mails it covers.
    ``uidvalidity`` None: nothing read yet (the whole folder is read)."""

    uidvalidity: int | None = None
    last_uid: int = 0


@dataclass(frozen=True)
class FetchedMail:
    uid: int
    uidvalidity: int
    raw: bytes = field(repr=False)
    internal_date: datetime | None = None


StoreCallback = Callable[[FetchedMail, MailboxState], None]
StateCallback = Callable[[MailboxState], None]


def tls_context(settings: ImapSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(settings: ImapSettings) -> IMAPClient:
    """A logged-in client (no folder selected). Raises IMAPClientError / OSError;
    ``imapclient.exceptions.LoginError`` for refused credentials."""
    client = IMAPClient(
        settings.host,
        port=settings.port,
        ssl=settings.security == "tls",
        ssl_context=tls_context(settings) if settings.security == "tls" else None,
        timeout=settings.timeout,
    )
    try:
        if settings.security == "starttls":
            client.starttls(tls_context(settings))
        client.login(settings.username, settings.password)
    except BaseException:
        close(client)
        raise
    client.normalise_times = False  # INTERNALDATE with its time zone
    return client


def close(client: IMAPClient | None) -> None:
    """Log out if the server still listens, else just drop the socket."""
    if client is None:
        return
    try:
        client.logout()
    except (*CONNECTION_ERRORS, ValueError):
        try:
            client.shutdown()
        except (*CONNECTION_ERRORS, ValueError):
            pass


def take_announced_mail(client: IMAPClient) -> bool:
    """Whether the server announced new mail (EXISTS) in the answer of an earlier command,
    forgetting it. imaplib keeps such unsolicited responses aside (IMAPClient only reads the
    ones it asked for), so they are looked up there."""
    untagged = getattr(getattr(client, "_imap", None), "untagged_responses", None)
    if not isinstance(untagged, dict):
        return False
    return bool(untagged.pop("EXISTS", None))


def answered_with_news(client: IMAPClient) -> bool:
    """Whether lines already wait in imaplib's read buffer (without reading from the network,
    so it never blocks)."""
    buffered = getattr(getattr(client, "_imap", None), "file", None)
    if buffered is None or not hasattr(buffered, "peek"):
        return False
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(buffered.peek(1))
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    finally:
        sock.settimeout(timeout)


class ImapReceiver:
    """Reads one folder and hands every new mail to ``store``.

    ``store(mail, state)`` must durably record the mail and ``state`` together (one
    transaction) and return; if it raises, the receiver keeps its previous state, drops the
    connection, backs off and reads the same mail again. ``save_state(state)`` records the
    starting point chosen on the first connection (``settings.start``), before any mail.
    ``run`` returns the last state when ``stop`` is set."""

    def __init__(
        self,
        settings: ImapSettings,
        store: StoreCallback,
        *,
        save_state: StateCallback | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.save_state = save_state
        # Counters for the operator (and the tests): how often each thing happened.
        self.connects = 0
        self.idles = 0
        self.polls = 0
        self.failures = 0
        self._sleep = sleep

    # -- one step at a time (each raises the connection errors) ----------------------------
    def sync(self, client: IMAPClient, state: MailboxState) -> MailboxState:
        """Select the folder and store every mail past ``state``; returns the new state."""
        selected = client.select_folder(self.settings.folder)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        if state.uidvalidity is None and self.settings.start != "all":
            state = self.starting_point(client, selected, uidvalidity)
            if self.save_state is not None:
                self.save_state(state)
        if state.uidvalidity != uidvalidity:
            if state.uidvalidity is not None:
                logger.warning(
                    "UIDVALIDITY of %s changed (%s -> %s): reading the folder again",
                    self.settings.folder,
                    state.uidvalidity,
                    uidvalidity,
                )
            state = MailboxState(uidvalidity=uidvalidity, last_uid=0)
        # From here on, an EXISTS the server slips into a SEARCH or FETCH answer is mail that
        # arrived during this sync: ``wait`` looks for it (the SELECT's own count is dropped).
        take_announced_mail(client)
        # "n:*" always matches the highest UID, even below n: keep only the new ones.
        uids = sorted(
            uid for uid in client.search(["UID", f"{state.last_uid + 1}:*"]) if uid > state.last_uid
        )
        for start in range(0, len(uids), self.settings.batch_size):
            batch = uids[start : start + self.settings.batch_size]
            answer = client.fetch(batch, ["BODY.PEEK[]", "INTERNALDATE"])
            for uid in batch:
                item = answer.get(uid)
                following = replace(state, last_uid=uid)
                if item is None or b"BODY[]" not in item:
                    state = following  # expunged meanwhile: nothing to store
                    continue
                mail = FetchedMail(
                    uid=uid,
                    uidvalidity=uidvalidity,
                    raw=bytes(item[b"BODY[]"]),
                    internal_date=item.get(b"INTERNALDATE"),
                )
                self.store(mail, following)
                state = following
        return state

    def starting_point(
        self, client: IMAPClient, selected: dict[bytes, Any], uidvalidity: int
    ) -> MailboxState:
        """The state of a first connection: everything below UIDNEXT counts as read ("new"),
        or everything below the first unseen mail ("unseen")."""
        uidnext = selected.get(b"UIDNEXT")
        if uidnext is None:  # RFC 3501 makes it optional: the highest UID + 1 then
            uids = client.search(["ALL"])
            uidnext = max(uids, default=0) + 1
        last_uid = int(uidnext) - 1
        if self.settings.start == "unseen":
            unseen = client.search(["UNSEEN"])
            if unseen:
                last_uid = min(unseen) - 1
        return MailboxState(uidvalidity=uidvalidity, last_uid=max(last_uid, 0))

    def wait(self, client: IMAPClient, stop: threading.Event) -> bool:
        """Wait for news: IDLE when the server offers it (re-issued after ``idle_seconds``),
        else one poll interval. True when the server announced new mail."""
        if take_announced_mail(client):
            # Mail arrived while the last sync fetched; the server told us then and will not
            # repeat it in IDLE, so without this it would wait for the next mail or renewal.
            return True
        if not (self.settings.use_idle and client.has_capability("IDLE")):
            self.polls += 1
            self.pause(stop, self.settings.poll_seconds)
            return False
        self.idles += 1
        client.idle()
        try:
            if answered_with_news(client):
                # The server sent news in the same read as its "+ idling": imaplib holds it in
                # its buffer, where idle_check (a poll of the socket) never looks.
                return True
            deadline = time.monotonic() + self.settings.idle_seconds
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False  # RFC 2177: end this IDLE and start a new one
                slice_seconds = min(self.settings.tick, remaining)
                started = time.monotonic()
                responses = client.idle_check(timeout=slice_seconds)
                if not responses and time.monotonic() - started < slice_seconds / 2:
                    # IMAPClient answers an EOF with an empty list: the socket was readable
                    # and held no line, so the server went away without a BYE.
                    raise EOFError("the IMAP connection was closed")
                for response in responses:
                    if b"BYE" in response:
                        raise EOFError("the server closed the IMAP session")
                    if len(response) > 1 and response[1] in (b"EXISTS", b"RECENT"):
                        return True
            return False
        finally:
            client.idle_done()

    def pause(self, stop: threading.Event, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            stop.wait(seconds)

    # -- the loop --------------------------------------------------------------------------
    def run(self, state: MailboxState, stop: threading.Event) -> MailboxState:
        """Read the folder until ``stop`` is set; survives server restarts and a failing
        ``store`` by reconnecting with backoff. Returns the last state."""
        delay = self.settings.backoff_initial
        while not stop.is_set():
            client = None
            try:
                client = connect(self.settings)
                self.connects += 1
                while not stop.is_set():
                    state = self.sync(client, state)
                    delay = self.settings.backoff_initial
                    if stop.is_set():
                        break
                    self.wait(client, stop)
            except CONNECTION_ERRORS as exc:
                self.failures += 1
                logger.warning("IMAP %s:%s: %s", self.settings.host, self.settings.port, exc)
            except Exception:
                # The store callback is the core's (a database outage, say): keep the state,
                # retry later rather than let the receiver thread die.
                self.failures += 1
                logger.exception("Storing a mail failed; it will be read again")
            finally:
                close(client)
            if not stop.is_set():
                self.pause(stop, delay)
                delay = min(delay * 2, self.settings.backoff_max)
        return state
