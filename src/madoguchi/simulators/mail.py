"""A mail provider in one process, for the demo and the tests: IMAP and SMTP on 127.0.0.1.

The email channel needs a mailbox to read (IMAP) and a server to send through (SMTP). The tests
use a real Dovecot (``tests/email_servers.py``), which ``madoguchi demo`` cannot start (it needs
root and a Debian package), so this module serves both from memory, on free local ports, in one
asyncio event loop running in a thread:

- an IMAP4rev1 server following RFC 3501 and RFC 2177 (IDLE): the greeting and CAPABILITY as
  Dovecot answers them (``IMAP4rev1 LITERAL+ SASL-IR IDLE UNSELECT AUTH=PLAIN``), LOGIN and
  AUTHENTICATE PLAIN (with or without an initial response), SELECT / EXAMINE (FLAGS,
  PERMANENTFLAGS, EXISTS, RECENT, UNSEEN, UIDVALIDITY, UIDNEXT, READ-WRITE / READ-ONLY), LIST,
  LSUB, STATUS, APPEND, CHECK, NOOP, SEARCH and FETCH and STORE with or without UID (search
  keys: flags, sequence and UID sets, NOT / OR / parentheses, dates, sizes, header and text
  substrings; fetch items: UID, FLAGS, RFC822.SIZE, INTERNALDATE, RFC822, RFC822.HEADER,
  RFC822.TEXT, BODY[] and BODY.PEEK[] with the sections "", HEADER, TEXT, HEADER.FIELDS (.NOT)
  and partial ranges, FAST), EXPUNGE, CLOSE, UNSELECT, IDLE / DONE with ``* n EXISTS`` pushed as
  mail arrives, LOGOUT; literals ``{n}`` and ``{n+}`` from the client, ``{n}`` to it. A session
  looks at its mailbox (and answers untagged EXISTS / RECENT / EXPUNGE) in SELECT, NOOP, CHECK,
  APPEND, EXPUNGE and IDLE, not in the middle of a FETCH, STORE or SEARCH: a client that
  ignores unsolicited EXISTS there (IMAPClient does) still hears of the mail in its next IDLE. Anything else is answered BAD (unknown or
  unsupported command or item) or NO (refused in this state). What is not there: TLS,
  ENVELOPE / BODYSTRUCTURE / numbered body parts, COPY / MOVE, CREATE / DELETE / RENAME.
- an SMTP server (aiosmtpd, in the same loop) for the mailboxes' owners: with a password set,
  AUTH PLAIN / LOGIN is required before MAIL (530 otherwise, 535 for a wrong one). Mail for an
  address of a mailbox here (plus-addresses ``local+tag@domain`` included) is delivered into
  its INBOX, as an MX would; mail for anyone else is captured (:meth:`MailSimulator.sent_to`),
  which is what the simulated customers read.
- simulated customers (:class:`MailChatter`), the WhatsApp simulator's personas, who write new
  mails and answer ours as their mail clients would (Gmail, Apple Mail, Outlook, Thunderbird,
  a Japanese client in ISO-2022-JP).

UIDVALIDITY is the time the simulator was made (as Dovecot does), so a new run's mailbox never
passes for the previous one. Everything listens on the loopback interface only and has no
security worth the name: never expose it. This module must not import Django.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import fnmatch
import itertools
import logging
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, getaddresses, parseaddr
from typing import Any

from .common import PERSONAS, Persona, tiny_pdf, tiny_png

__all__ = [
    "CapturedMail",
    "MailChatter",
    "MailSimulator",
    "RunningMailServer",
]

log = logging.getLogger(__name__)

GREETING_CAPABILITIES = "IMAP4rev1 LITERAL+ SASL-IR IDLE UNSELECT AUTH=PLAIN"
CAPABILITIES = "IMAP4rev1 LITERAL+ SASL-IR IDLE UNSELECT"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MAX_LITERAL = 50 * 1024 * 1024
LINE_LIMIT = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The mail store


@dataclass
class StoredMail:
    uid: int
    raw: bytes = field(repr=False)
    internal_date: datetime
    flags: set[str] = field(default_factory=set)
    recent_session: int | None = None  # the one session for which it is \Recent

    def parsed(self) -> Message:
        return email.message_from_bytes(self.raw, policy=email.policy.default)


class Folder:
    def __init__(self, name: str, uidvalidity: int) -> None:
        self.name = name
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.mails: list[StoredMail] = []

    def by_uid(self) -> dict[int, StoredMail]:
        return {mail.uid: mail for mail in self.mails}


@dataclass
class Account:
    address: str
    password: str = field(repr=False)
    smtp_password: str = field(default="", repr=False)
    folders: dict[str, Folder] = field(default_factory=dict)

    def folder(self, name: str) -> Folder | None:
        key = "INBOX" if name.upper() == "INBOX" else name
        return self.folders.get(key)


@dataclass(frozen=True)
class CapturedMail:
    """A mail the SMTP server accepted for an address outside the simulator."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes = field(repr=False)
    received_at: float

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


def normalize_crlf(raw: bytes) -> bytes:
    """IMAP serves mail with CRLF line ends (RFC 3501 §2.3.1): lone LFs become CRLF."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw)


def base_address(address: str) -> str:
    """``support@x`` for ``support+anything@x`` (lower-cased)."""
    local, _, domain = address.strip().lower().partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


# ---------------------------------------------------------------------------------------------
# IMAP syntax


class ImapError(Exception):
    """Ends one command: ``status`` is NO or BAD; ``code`` the optional response code."""

    def __init__(self, status: str, text: str, code: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


class Atom(str):
    """An unquoted token (a str), as opposed to a string (bytes) from quotes or a literal."""


Token = Atom | bytes | list[Any]
ATOM_END = b" ()\r\n"
LITERAL_END_RE = re.compile(rb"\{(\d+)(\+?)\}\r?\n$")


def tokenize(data: bytes) -> list[Token]:
    """Tokens of one command line, its literals included (``{n}`` CRLF then n bytes).
    Raises ImapError BAD on bad syntax."""
    tokens, _end = parse_list(data, 0, top=True)
    return tokens


def parse_list(data: bytes, i: int, *, top: bool = False) -> tuple[list[Token], int]:
    out: list[Token] = []
    n = len(data)
    while True:
        while i < n and data[i] == 0x20:
            i += 1
        if i >= n or data[i : i + 2] == b"\r\n" or data[i : i + 1] == b"\n":
            if not top:
                raise ImapError("BAD", "Missing ')'")
            return out, i
        c = data[i : i + 1]
        if c == b"(":
            inner, i = parse_list(data, i + 1)
            out.append(inner)
        elif c == b")":
            if top:
                raise ImapError("BAD", "Unexpected ')'")
            return out, i + 1
        elif c == b'"':
            i += 1
            value = bytearray()
            while True:
                if i >= n or data[i : i + 1] in (b"\r", b"\n"):
                    raise ImapError("BAD", "Missing '\"'")
                ch = data[i : i + 1]
                if ch == b"\\" and i + 1 < n:
                    value += data[i + 1 : i + 2]
                    i += 2
                    continue
                if ch == b'"':
                    i += 1
                    break
                value += ch
                i += 1
            out.append(bytes(value))
        elif c == b"{":
            match = re.compile(rb"\{(\d+)\+?\}\r?\n").match(data, i)
            if not match:
                raise ImapError("BAD", "Invalid literal")
            size = int(match.group(1))
            start = match.end()
            if start + size > n:
                raise ImapError("BAD", "Literal shorter than announced")
            out.append(data[start : start + size])
            i = start + size
        else:
            start = i
            depth = 0
            while i < n:
                ch = data[i : i + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth = max(depth - 1, 0)
                elif depth == 0 and ch in (b" ", b"(", b")", b"\r", b"\n"):
                    break
                i += 1
            out.append(Atom(data[start:i].decode("utf-8", "surrogateescape")))


def text_of(token: Token) -> str:
    if isinstance(token, list):
        raise ImapError("BAD", "Expected a string, not a list")
    if isinstance(token, bytes):
        return token.decode("utf-8", "surrogateescape")
    return str(token)


def quoted(value: str | bytes) -> bytes:
    """A string for a response: quoted when it is short, printable 7-bit, else a literal."""
    data = value.encode() if isinstance(value, str) else value
    if len(data) < 200 and all(0x20 <= b < 0x7F for b in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def internaldate(moment: datetime) -> str:
    """RFC 3501 date-time: ``"03-Jun-2024 10:05:00 +0900"`` (English month names)."""
    offset = moment.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return (
        f"{moment.day:02d}-{MONTHS[moment.month - 1]}-{moment.year:04d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {zone}"
    )


def parse_internaldate(value: str) -> datetime:
    try:
        return datetime.strptime(value.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        raise ImapError("BAD", "Invalid date-time") from None


def parse_search_date(value: str) -> date:
    match = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", value.strip())
    if not match or match.group(2).title() not in MONTHS:
        raise ImapError("BAD", f"Invalid search date {value!r}")
    return date(int(match.group(3)), MONTHS.index(match.group(2).title()) + 1, int(match.group(1)))


def parse_set(spec: str, star: int) -> list[tuple[int, int]]:
    """RFC 3501 sequence-set as (low, high) ranges; ``*`` is ``star`` (0 when empty)."""
    ranges = []
    for item in spec.split(","):
        ends = item.split(":")
        if not item or len(ends) > 2:
            raise ImapError("BAD", f"Invalid sequence set {spec!r}")
        values = []
        for end in ends:
            if end == "*":
                values.append(star)
            elif end.isdigit() and int(end) > 0:
                values.append(int(end))
            else:
                raise ImapError("BAD", f"Invalid sequence set {spec!r}")
        low, high = min(values), max(values)
        ranges.append((low, high))
    return ranges


def in_set(value: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(low <= value <= high for low, high in ranges)


def is_set(token: Token) -> bool:
    return isinstance(token, Atom) and bool(re.fullmatch(r"[0-9*:,]+", token))


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header block with its blank line, body) of a raw mail."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        index = raw.find(separator)
        if index >= 0:
            return raw[: index + len(separator)], raw[index + len(separator) :]
    return raw, b""


def header_fields(header: bytes, names: set[str], *, exclude: bool) -> bytes:
    """The header lines (with their continuations) whose name is (not) in ``names``."""
    out = []
    keep = False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").upper()
        keep = (name in names) != exclude
        if keep:
            out.append(line)
    return b"".join(item + b"\r\n" for item in out) + b"\r\n"


# ---------------------------------------------------------------------------------------------
# One IMAP connection


@dataclass
class FetchItem:
    name: str  # as answered, e.g. "BODY[HEADER.FIELDS (FROM)]<0>"
    getter: Callable[[StoredMail], bytes]
    sets_seen: bool = False


class ImapSession:
    """One client connection. States: not authenticated, authenticated, selected, logout."""

    ids = itertools.count(1)

    def __init__(
        self, sim: MailSimulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.sim = sim
        self.reader = reader
        self.writer = writer
        self.id = next(self.ids)
        self.account: Account | None = None
        self.folder: Folder | None = None
        self.readonly = False
        self.known: list[int] = []  # the UIDs this client knows, in sequence order
        self.recent: set[int] = set()
        self.wake = asyncio.Event()
        self.idling = False
        self.loop = asyncio.get_running_loop()

    # -- I/O ------------------------------------------------------------------------------
    async def send(self, *lines: bytes) -> None:
        """The lines in one write (so in one packet on the loopback, as a server's one answer)."""
        self.writer.write(b"".join(line + b"\r\n" for line in lines))
        await self.writer.drain()

    async def read_command(self) -> bytes | None:
        """One command with its literals (answering "+" to synchronising ones); None at EOF."""
        parts = []
        while True:
            line = await self.reader.readline()
            if not line:
                return None
            parts.append(line)
            match = LITERAL_END_RE.search(line)
            if not match:
                return b"".join(parts)
            size = int(match.group(1))
            if size > MAX_LITERAL:
                raise ImapError("BAD", "Literal too big")
            if not match.group(2):
                await self.send(b"+ Ready for literal data")
            parts.append(await self.reader.readexactly(size))

    def notify(self) -> None:
        """Called from any thread when the store changed."""
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:
            pass  # the loop is closed: the session is gone

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        with self.sim.lock:
            self.sim.sessions.add(self)
        try:
            await self.send(
                f"* OK [CAPABILITY {GREETING_CAPABILITIES}] Madoguchi mail simulator ready.".encode()
            )
            while True:
                try:
                    data = await self.read_command()
                except ImapError as exc:
                    await self.send(f"* BAD {exc.text}".encode())
                    continue
                if data is None:
                    return
                if not data.strip():
                    continue
                if not await self.execute(data):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except ValueError:  # a line past the reader's limit
            return
        finally:
            with self.sim.lock:
                self.sim.sessions.discard(self)
            with contextlib.suppress(Exception):  # closing a socket that may be dead
                self.writer.close()

    async def execute(self, data: bytes) -> bool:
        """Run one command; False when the connection must end."""
        tag = "*"
        try:
            tokens = tokenize(data)
            if not tokens or not isinstance(tokens[0], Atom) or tokens[0] in ("*", "+"):
                raise ImapError("BAD", "Error in IMAP command received by server.")
            tag = str(tokens[0])
            if len(tokens) < 2 or not isinstance(tokens[1], Atom):
                raise ImapError("BAD", "Error in IMAP command received by server.")
            name = tokens[1].upper()
            args = tokens[2:]
            if name == "UID":
                if not args or not isinstance(args[0], Atom):
                    raise ImapError("BAD", "Missing UID command")
                name = "UID " + args[0].upper()
                args = args[1:]
            handler = COMMANDS.get(name)
            if handler is None:
                raise ImapError("BAD", f"Unknown command {name.split()[-1]}")
            method, states = handler
            if self.state not in states:
                if self.state == "not authenticated":
                    raise ImapError("BAD", f"{name} needs a login first")
                raise ImapError("BAD", f"{name} is not allowed now")
            text = await method(self, tag, args)
        except ImapError as exc:
            code = f"[{exc.code}] " if exc.code else ""
            await self.send(f"{tag} {exc.status} {code}{exc.text}".encode())
            return True
        if text is None:
            return False
        await self.send(f"{tag} {text}".encode())
        return True

    @property
    def state(self) -> str:
        if self.account is None:
            return "not authenticated"
        return "selected" if self.folder is not None else "authenticated"

    # -- mailbox updates ------------------------------------------------------------------
    def updates(self, *, expunge: bool = True) -> list[bytes]:
        """Untagged EXPUNGE / EXISTS / RECENT for what changed since the client last heard."""
        if self.folder is None:
            return []
        lines = []
        with self.sim.lock:
            current = [mail.uid for mail in self.folder.mails]
            present = set(current)
            if expunge:
                for index in range(len(self.known) - 1, -1, -1):
                    if self.known[index] not in present:
                        lines.append(b"* %d EXPUNGE" % (index + 1))
                        self.recent.discard(self.known.pop(index))
            known = set(self.known)
            new = [uid for uid in current if uid not in known]
            if not new:
                return lines
            by_uid = self.folder.by_uid()
            for uid in new:
                mail = by_uid[uid]
                if mail.recent_session in (None, self.id):
                    mail.recent_session = self.id
                    self.recent.add(uid)
            self.known.extend(new)
        lines.append(b"* %d EXISTS" % len(self.known))
        lines.append(b"* %d RECENT" % len(self.recent))
        return lines

    def mails(self) -> list[tuple[int, StoredMail]]:
        """(sequence number, mail) of what the client knows (expunged ones left out)."""
        assert self.folder is not None
        with self.sim.lock:
            by_uid = self.folder.by_uid()
        return [(seq, by_uid[uid]) for seq, uid in enumerate(self.known, 1) if uid in by_uid]

    def select_set(self, spec: Token, *, uid: bool) -> list[tuple[int, StoredMail]]:
        if not is_set(spec):
            raise ImapError("BAD", "Invalid sequence set")
        mails = self.mails()
        if uid:
            star = max((mail.uid for _seq, mail in mails), default=0)
            ranges = parse_set(str(spec), star)
            return [(seq, mail) for seq, mail in mails if in_set(mail.uid, ranges)]
        ranges = parse_set(str(spec), len(self.known))
        if any(high > len(self.known) or low == 0 for low, high in ranges):
            raise ImapError("BAD", "Invalid messageset")
        return [(seq, mail) for seq, mail in mails if in_set(seq, ranges)]

    # -- commands, any state --------------------------------------------------------------
    async def cmd_capability(self, tag: str, args: list[Token]) -> str:
        caps = CAPABILITIES if self.account else GREETING_CAPABILITIES
        await self.send(f"* CAPABILITY {caps}".encode())
        return "OK Capability completed."

    async def cmd_noop(self, tag: str, args: list[Token]) -> str:
        await self.send(*self.updates())
        return "OK NOOP completed."

    async def cmd_logout(self, tag: str, args: list[Token]) -> None:
        await self.send(b"* BYE Logging out", f"{tag} OK Logout completed.".encode())
        return None

    # -- not authenticated ----------------------------------------------------------------
    def log_in(self, username: str, password: str) -> str:
        account = self.sim.check_login(username, password)
        if account is None:
            raise ImapError("NO", "Authentication failed.", "AUTHENTICATIONFAILED")
        self.account = account
        return f"OK [CAPABILITY {CAPABILITIES}] Logged in"

    async def cmd_login(self, tag: str, args: list[Token]) -> str:
        if len(args) != 2:
            raise ImapError("BAD", "LOGIN needs a user name and a password")
        return self.log_in(text_of(args[0]), text_of(args[1]))

    async def cmd_authenticate(self, tag: str, args: list[Token]) -> str:
        if not args or len(args) > 2:
            raise ImapError("BAD", "AUTHENTICATE needs a mechanism")
        if text_of(args[0]).upper() != "PLAIN":
            raise ImapError("NO", "Unsupported authentication mechanism.")
        if len(args) == 2:  # SASL-IR (RFC 4959): "=" is an empty initial response
            answer = text_of(args[1])
            answer = "" if answer == "=" else answer
        else:
            await self.send(b"+ ")
            line = await self.reader.readline()
            answer = line.decode("ascii", "replace").strip()
            if answer == "*":
                raise ImapError("BAD", "Authentication aborted by client.")
        try:
            decoded = base64.b64decode(answer, validate=True).decode("utf-8")
            _authzid, authcid, password = decoded.split("\0")
        except (ValueError, UnicodeDecodeError):
            raise ImapError("BAD", "Invalid base64 data in continued response") from None
        return self.log_in(authcid, password)

    # -- authenticated --------------------------------------------------------------------
    def find_folder(self, token: Token) -> Folder:
        assert self.account is not None
        folder = self.account.folder(text_of(token))
        if folder is None:
            raise ImapError("NO", "Mailbox doesn't exist: " + text_of(token), "NONEXISTENT")
        return folder

    async def cmd_select(self, tag: str, args: list[Token], readonly: bool = False) -> str:
        if len(args) != 1:
            raise ImapError("BAD", "SELECT needs one mailbox name")
        self.folder = None  # a failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1)
        self.known = []
        self.recent = set()
        folder = self.find_folder(args[0])
        self.folder = folder
        self.readonly = readonly
        self.updates()
        with self.sim.lock:
            unseen = next(
                (
                    seq
                    for seq, uid in enumerate(self.known, 1)
                    for mail in folder.mails
                    if mail.uid == uid and "\\Seen" not in mail.flags
                ),
                0,
            )
            uidvalidity, uidnext = folder.uidvalidity, folder.uidnext
        flags = " ".join(SYSTEM_FLAGS)
        permanent = "()" if readonly else f"({flags} \\*)"
        lines = [
            f"* FLAGS ({flags})".encode(),
            f"* OK [PERMANENTFLAGS {permanent}] Flags permitted.".encode(),
            b"* %d EXISTS" % len(self.known),
            b"* %d RECENT" % len(self.recent),
        ]
        if unseen:
            lines.append(b"* OK [UNSEEN %d] First unseen." % unseen)
        lines += [
            b"* OK [UIDVALIDITY %d] UIDs valid" % uidvalidity,
            b"* OK [UIDNEXT %d] Predicted next UID" % uidnext,
        ]
        await self.send(*lines)
        if readonly:
            return "OK [READ-ONLY] Examine completed."
        return "OK [READ-WRITE] Select completed."

    async def cmd_examine(self, tag: str, args: list[Token]) -> str:
        return await self.cmd_select(tag, args, readonly=True)

    async def cmd_list(self, tag: str, args: list[Token], command: str = "LIST") -> str:
        if len(args) != 2:
            raise ImapError("BAD", f"{command} needs a reference and a mailbox pattern")
        assert self.account is not None
        reference, pattern = text_of(args[0]), text_of(args[1])
        if not pattern:
            await self.send(f'* {command} (\\Noselect) "." ""'.encode())
            return f"OK {command} completed."
        wanted = (reference + pattern).replace("%", "*")
        lines = []
        with self.sim.lock:
            names = list(self.account.folders)
        for name in names:
            if fnmatch.fnmatchcase(name.upper() if name == "INBOX" else name, wanted) or (
                name == "INBOX" and wanted.upper() == "INBOX"
            ):
                lines.append(f'* {command} (\\HasNoChildren) "." '.encode() + quoted(name))
        await self.send(*lines)
        return f"OK {command} completed."

    async def cmd_lsub(self, tag: str, args: list[Token]) -> str:
        return await self.cmd_list(tag, args, "LSUB")

    async def cmd_status(self, tag: str, args: list[Token]) -> str:
        if len(args) != 2 or not isinstance(args[1], list):
            raise ImapError("BAD", "STATUS needs a mailbox and a list of items")
        folder = self.find_folder(args[0])
        values = []
        with self.sim.lock:
            for item in args[1]:
                key = text_of(item).upper()
                if key == "MESSAGES":
                    value = len(folder.mails)
                elif key == "RECENT":
                    value = sum(1 for m in folder.mails if m.recent_session in (None, self.id))
                elif key == "UIDNEXT":
                    value = folder.uidnext
                elif key == "UIDVALIDITY":
                    value = folder.uidvalidity
                elif key == "UNSEEN":
                    value = sum(1 for m in folder.mails if "\\Seen" not in m.flags)
                else:
                    raise ImapError("BAD", f"Invalid STATUS item {key}")
                values.append(f"{key} {value}")
        await self.send(b"* STATUS " + quoted(folder.name) + f" ({' '.join(values)})".encode())
        return "OK Status completed."

    async def cmd_append(self, tag: str, args: list[Token]) -> str:
        if len(args) < 2 or not isinstance(args[-1], bytes):
            raise ImapError("BAD", "APPEND needs a mailbox and a message literal")
        folder = self.find_folder(args[0])
        flags: set[str] = set()
        moment = None
        for extra in args[1:-1]:
            if isinstance(extra, list):
                flags = {text_of(flag) for flag in extra}
            else:
                moment = parse_internaldate(text_of(extra))
        unknown = {f for f in flags if f.startswith("\\") and f not in SYSTEM_FLAGS}
        if unknown:
            raise ImapError("BAD", "Invalid system flag " + ", ".join(sorted(unknown)))
        self.sim.store(folder, args[-1], flags=flags, internal_date=moment)
        await self.send(*self.updates())
        return "OK Append completed."

    async def cmd_idle(self, tag: str, args: list[Token]) -> str:
        pending = self.updates()
        if pending and not self.sim.idle_news_delay:
            await self.send(b"+ idling", *pending)  # one write: one packet, as a server may
            pending = []
        else:
            await self.send(b"+ idling")
        self.wake.clear()
        self.idling = True
        line_task = asyncio.ensure_future(self.reader.readline())
        try:
            if pending:
                # News older than the IDLE goes out a moment after "+ idling", as Dovecot's own
                # mailbox check after "+ idling" usually does.
                await asyncio.wait({line_task}, timeout=self.sim.idle_news_delay)
                await self.send(*pending)
            while True:
                wake_task = asyncio.ensure_future(self.wake.wait())
                done, _pending = await asyncio.wait(
                    {line_task, wake_task},
                    timeout=self.sim.idle_keepalive,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if wake_task not in done:
                    wake_task.cancel()
                if line_task in done:
                    line = line_task.result()
                    if not line:
                        raise ConnectionResetError("client went away while idling")
                    if line.strip().upper() != b"DONE":
                        raise ImapError("BAD", "Expected DONE.")
                    return "OK Idle completed."
                if not done:  # RFC 2177 lets a server say it is still there (Dovecot: 2 min)
                    await self.send(b"* OK Still here")
                    continue
                self.wake.clear()
                await self.send(*self.updates())
        finally:
            self.idling = False
            if not line_task.done():
                line_task.cancel()

    # -- selected -------------------------------------------------------------------------
    async def cmd_check(self, tag: str, args: list[Token]) -> str:
        await self.send(*self.updates())
        return "OK Check completed."

    def expunge_deleted(self) -> None:
        assert self.folder is not None
        with self.sim.lock:
            self.folder.mails = [m for m in self.folder.mails if "\\Deleted" not in m.flags]
        self.sim.changed()

    async def cmd_close(self, tag: str, args: list[Token]) -> str:
        if not self.readonly:
            self.expunge_deleted()  # silently: no EXPUNGE responses (RFC 3501 §6.4.2)
        self.folder, self.known, self.recent = None, [], set()
        return "OK Close completed."

    async def cmd_unselect(self, tag: str, args: list[Token]) -> str:
        self.folder, self.known, self.recent = None, [], set()
        return "OK Unselect completed."

    async def cmd_expunge(self, tag: str, args: list[Token]) -> str:
        if self.readonly:
            raise ImapError("NO", "Mailbox is read-only.")
        self.expunge_deleted()
        await self.send(*self.updates())
        return "OK Expunge completed."

    async def cmd_search(self, tag: str, args: list[Token], uid: bool = False) -> str:
        if len(args) >= 2 and text_of(args[0]).upper() == "CHARSET":
            if text_of(args[1]).upper() not in ("US-ASCII", "UTF-8"):
                raise ImapError("NO", "Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
            args = args[2:]
        if not args:
            raise ImapError("BAD", "Missing search criteria")
        mails = self.mails()
        predicates = []
        position = 0
        while position < len(args):
            predicate, position = self.search_key(args, position, mails)
            predicates.append(predicate)
        found = [
            (mail.uid if uid else seq)
            for seq, mail in mails
            if all(predicate(seq, mail) for predicate in predicates)
        ]
        await self.send(("* SEARCH" + "".join(f" {n}" for n in found)).encode())
        return "OK Search completed."

    def search_key(
        self, args: list[Token], i: int, mails: list[tuple[int, StoredMail]]
    ) -> tuple[Callable[[int, StoredMail], bool], int]:
        token = args[i]
        if isinstance(token, list):
            inner = []
            position = 0
            while position < len(token):
                predicate, position = self.search_key(token, position, mails)
                inner.append(predicate)
            return (lambda s, m: all(p(s, m) for p in inner)), i + 1
        if is_set(token):
            ranges = parse_set(str(token), len(self.known))
            return (lambda s, m: in_set(s, ranges)), i + 1
        key = text_of(token).upper()

        def arg(offset: int = 1) -> Token:
            if i + offset >= len(args):
                raise ImapError("BAD", f"Missing argument of {key}")
            return args[i + offset]

        flag_keys = {
            "ANSWERED": ("\\Answered", True),
            "DELETED": ("\\Deleted", True),
            "DRAFT": ("\\Draft", True),
            "FLAGGED": ("\\Flagged", True),
            "SEEN": ("\\Seen", True),
            "UNANSWERED": ("\\Answered", False),
            "UNDELETED": ("\\Deleted", False),
            "UNDRAFT": ("\\Draft", False),
            "UNFLAGGED": ("\\Flagged", False),
            "UNSEEN": ("\\Seen", False),
        }
        if key == "ALL":
            return (lambda s, m: True), i + 1
        if key in flag_keys:
            flag, present = flag_keys[key]
            return (lambda s, m: (flag in m.flags) == present), i + 1
        if key in ("KEYWORD", "UNKEYWORD"):
            keyword, present = text_of(arg()), key == "KEYWORD"
            return (lambda s, m: (keyword in m.flags) == present), i + 2
        if key == "RECENT":
            return (lambda s, m: m.uid in self.recent), i + 1
        if key == "OLD":
            return (lambda s, m: m.uid not in self.recent), i + 1
        if key == "NEW":
            return (lambda s, m: m.uid in self.recent and "\\Seen" not in m.flags), i + 1
        if key == "UID":
            if not is_set(arg()):
                raise ImapError("BAD", "Invalid UID set")
            star = max((mail.uid for _s, mail in mails), default=0)
            ranges = parse_set(str(arg()), star)
            return (lambda s, m: in_set(m.uid, ranges)), i + 2
        if key == "NOT":
            inner, after = self.search_key(args, i + 1, mails)
            return (lambda s, m: not inner(s, m)), after
        if key == "OR":
            first, middle = self.search_key(args, i + 1, mails)
            second, after = self.search_key(args, middle, mails)
            return (lambda s, m: first(s, m) or second(s, m)), after
        if key in ("LARGER", "SMALLER"):
            size = text_of(arg())
            if not size.isdigit():
                raise ImapError("BAD", f"Invalid size for {key}")
            if key == "LARGER":
                return (lambda s, m: len(m.raw) > int(size)), i + 2
            return (lambda s, m: len(m.raw) < int(size)), i + 2
        if key in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
            day = parse_search_date(text_of(arg()))
            sent = key.startswith("SENT")
            compare = {
                "BEFORE": lambda d: d < day,
                "ON": lambda d: d == day,
                "SINCE": lambda d: d >= day,
            }[key.removeprefix("SENT")]

            def on_date(s: int, m: StoredMail) -> bool:
                moment = m.internal_date
                if sent:
                    value = m.parsed()["Date"]
                    moment = value.datetime if value is not None and value.datetime else moment
                return compare(moment.date())

            return on_date, i + 2
        if key in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            needle = text_of(arg()).casefold()
            return (lambda s, m: needle in str(m.parsed()[key] or "").casefold()), i + 2
        if key == "HEADER":
            name, needle = text_of(arg()), text_of(arg(2)).casefold()
            return (lambda s, m: needle in str(m.parsed()[name] or "").casefold()), i + 3
        if key in ("BODY", "TEXT"):
            needle = text_of(arg()).casefold()

            def contains(s: int, m: StoredMail) -> bool:
                header, body = split_header(m.raw)
                haystack = body_text(m.parsed()) + body.decode("utf-8", "replace")
                if key == "TEXT":
                    haystack = header.decode("utf-8", "replace") + haystack
                return needle in haystack.casefold()

            return contains, i + 2
        raise ImapError("BAD", f"Unknown search key {key}")

    def fetch_items(self, spec: Token, *, uid: bool) -> list[FetchItem]:
        items = spec if isinstance(spec, list) else [spec]
        names: list[str] = []
        for item in items:
            word = text_of(item).upper()
            if word == "FAST":
                names += ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
            elif word in ("ALL", "FULL", "ENVELOPE", "BODY", "BODYSTRUCTURE"):
                raise ImapError("BAD", f"FETCH {word} is not supported by the simulator")
            else:
                names.append(text_of(item))
        if uid and not any(n.upper() == "UID" for n in names):
            names.insert(0, "UID")  # RFC 3501 §6.4.8: UID FETCH always answers the UID
        return [self.fetch_item(name) for name in names]

    def fetch_item(self, name: str) -> FetchItem:
        upper = name.upper()
        simple: dict[str, Callable[[StoredMail], bytes]] = {
            "UID": lambda m: b"%d" % m.uid,
            "FLAGS": lambda m: self.flags_of(m),
            "RFC822.SIZE": lambda m: b"%d" % len(m.raw),
            "INTERNALDATE": lambda m: quoted(internaldate(m.internal_date)),
            "RFC822": lambda m: quoted_literal(m.raw),
            "RFC822.HEADER": lambda m: quoted_literal(split_header(m.raw)[0]),
            "RFC822.TEXT": lambda m: quoted_literal(split_header(m.raw)[1]),
        }
        if upper in simple:
            return FetchItem(upper, simple[upper], sets_seen=upper in ("RFC822", "RFC822.TEXT"))
        match = re.fullmatch(r"BODY(\.PEEK)?\[([^\]]*)\](?:<(\d+)(?:\.(\d+))?>)?", name, re.I)
        if not match:
            raise ImapError("BAD", f"Invalid or unsupported FETCH item {name}")
        peek, section, origin, count = match.groups()
        section_upper = section.upper().strip()
        fields_match = re.fullmatch(r"HEADER\.FIELDS(\.NOT)?\s*\(([^)]*)\)", section_upper)
        extract: Callable[[bytes], bytes]
        if section_upper == "":
            extract = lambda raw: raw  # noqa: E731
        elif section_upper == "HEADER":
            extract = lambda raw: split_header(raw)[0]  # noqa: E731
        elif section_upper == "TEXT":
            extract = lambda raw: split_header(raw)[1]  # noqa: E731
        elif fields_match:
            names = set(fields_match.group(2).split())
            exclude = bool(fields_match.group(1))
            extract = lambda raw: header_fields(split_header(raw)[0], names, exclude=exclude)  # noqa: E731
        else:
            raise ImapError("BAD", f"FETCH section [{section}] is not supported by the simulator")
        answered = f"BODY[{section_upper}]" + (f"<{origin}>" if origin is not None else "")

        def getter(mail: StoredMail) -> bytes:
            data = extract(mail.raw)
            if origin is not None:
                start = int(origin)
                data = data[start : start + int(count)] if count else data[start:]
            return quoted_literal(data)

        return FetchItem(answered, getter, sets_seen=not peek)

    def flags_of(self, mail: StoredMail) -> bytes:
        flags = sorted(mail.flags) + (["\\Recent"] if mail.uid in self.recent else [])
        return ("(" + " ".join(flags) + ")").encode()

    async def cmd_fetch(self, tag: str, args: list[Token], uid: bool = False) -> str:
        if len(args) != 2:
            raise ImapError("BAD", "FETCH needs a message set and items")
        targets = self.select_set(args[0], uid=uid)
        items = self.fetch_items(args[1], uid=uid)
        marks_seen = any(item.sets_seen for item in items) and not self.readonly
        out = []
        for seq, mail in targets:
            answered = items
            if marks_seen and "\\Seen" not in mail.flags:
                with self.sim.lock:
                    mail.flags.add("\\Seen")
                if not any(item.name == "FLAGS" for item in items):
                    answered = [*items, self.fetch_item("FLAGS")]  # the change is reported
            parts = [item.name.encode() + b" " + item.getter(mail) for item in answered]
            out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")")
        await self.send(*out)
        return "OK Fetch completed."

    async def cmd_store(self, tag: str, args: list[Token], uid: bool = False) -> str:
        if len(args) != 3:
            raise ImapError("BAD", "STORE needs a message set, an item and flags")
        if self.readonly:
            raise ImapError("NO", "Mailbox is read-only.")
        targets = self.select_set(args[0], uid=uid)
        item = text_of(args[1]).upper()
        match = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", item)
        if not match:
            raise ImapError("BAD", f"Invalid STORE item {item}")
        raw_flags = args[2] if isinstance(args[2], list) else [args[2]]
        flags = {text_of(flag) for flag in raw_flags}
        unknown = {f for f in flags if f.startswith("\\") and f not in SYSTEM_FLAGS}
        if unknown:
            raise ImapError("BAD", "Invalid system flag " + ", ".join(sorted(unknown)))
        out = []
        with self.sim.lock:
            for seq, mail in targets:
                if match.group(1) == "+":
                    mail.flags |= flags
                elif match.group(1) == "-":
                    mail.flags -= flags
                else:
                    mail.flags = set(flags)
                if not match.group(2):
                    uid_part = b"UID %d " % mail.uid if uid else b""
                    out.append(b"* %d FETCH (%sFLAGS %s)" % (seq, uid_part, self.flags_of(mail)))
        await self.send(*out)
        return "OK Store completed."

    async def cmd_uid_search(self, tag: str, args: list[Token]) -> str:
        return await self.cmd_search(tag, args, uid=True)

    async def cmd_uid_fetch(self, tag: str, args: list[Token]) -> str:
        return await self.cmd_fetch(tag, args, uid=True)

    async def cmd_uid_store(self, tag: str, args: list[Token]) -> str:
        return await self.cmd_store(tag, args, uid=True)


def quoted_literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def body_text(msg: Message) -> str:
    parts = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            try:
                parts.append(str(part.get_content()))  # type: ignore[attr-defined]
            except (LookupError, ValueError, AttributeError):
                continue
    return "\n".join(parts)


ANY = ("not authenticated", "authenticated", "selected")
AUTHENTICATED = ("authenticated", "selected")
SELECTED = ("selected",)
COMMANDS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "CAPABILITY": (ImapSession.cmd_capability, ANY),
    "NOOP": (ImapSession.cmd_noop, ANY),
    "LOGOUT": (ImapSession.cmd_logout, ANY),
    "LOGIN": (ImapSession.cmd_login, ("not authenticated",)),
    "AUTHENTICATE": (ImapSession.cmd_authenticate, ("not authenticated",)),
    "SELECT": (ImapSession.cmd_select, AUTHENTICATED),
    "EXAMINE": (ImapSession.cmd_examine, AUTHENTICATED),
    "LIST": (ImapSession.cmd_list, AUTHENTICATED),
    "LSUB": (ImapSession.cmd_lsub, AUTHENTICATED),
    "STATUS": (ImapSession.cmd_status, AUTHENTICATED),
    "APPEND": (ImapSession.cmd_append, AUTHENTICATED),
    "IDLE": (ImapSession.cmd_idle, AUTHENTICATED),
    "CHECK": (ImapSession.cmd_check, SELECTED),
    "CLOSE": (ImapSession.cmd_close, SELECTED),
    "UNSELECT": (ImapSession.cmd_unselect, SELECTED),
    "EXPUNGE": (ImapSession.cmd_expunge, SELECTED),
    "SEARCH": (ImapSession.cmd_search, SELECTED),
    "FETCH": (ImapSession.cmd_fetch, SELECTED),
    "STORE": (ImapSession.cmd_store, SELECTED),
    "UID SEARCH": (ImapSession.cmd_uid_search, SELECTED),
    "UID FETCH": (ImapSession.cmd_uid_fetch, SELECTED),
    "UID STORE": (ImapSession.cmd_uid_store, SELECTED),
}


# ---------------------------------------------------------------------------------------------
# SMTP (aiosmtpd)


class SmtpHandler:
    """aiosmtpd handler: AUTH checked against the mailboxes, mail delivered or captured."""

    def __init__(self, sim: MailSimulator) -> None:
        self.sim = sim

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and self.sim.check_smtp_login(
            auth_data.login.decode("utf-8", "replace"),
            auth_data.password.decode("utf-8", "replace"),
        )
        # handled=False: aiosmtpd answers "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=ok, handled=False)

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:
        if self.sim.smtp_requires_auth() and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.sim.accept(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        return "250 2.0.0 Message accepted for delivery"


# ---------------------------------------------------------------------------------------------
# The simulator


@dataclass
class RunningMailServer:
    """The IMAP and SMTP servers of a :class:`MailSimulator`, serving in a thread."""

    sim: MailSimulator
    host: str
    imap_port: int
    smtp_port: int

    @property
    def url(self) -> str:
        """``imap://127.0.0.1:<port>`` (the mailbox; :attr:`smtp_url` sends)."""
        return f"imap://{self.host}:{self.imap_port}"

    @property
    def smtp_url(self) -> str:
        return f"smtp://{self.host}:{self.smtp_port}"

    def stop(self, timeout: float = 5.0) -> None:
        self.sim.stop_serving(timeout)

    def __enter__(self) -> RunningMailServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MailSimulator:
    """Mailboxes in memory with an IMAP and an SMTP server (see the module docstring).

    ``idle_keepalive``: the seconds between two ``* OK Still here`` to an idle client.
    ``idle_news_delay``: news older than an IDLE goes out this long after ``+ idling``; 0 sends
    it in the same write, as a server may (the client then finds both lines in one read).
    ``add_mailbox(address, password)`` makes an account whose INBOX receives mail for
    ``address`` and its plus-addresses. ``deliver(raw)`` puts a mail into the mailbox of its
    recipients (as an MX would); ``sent_to(address)`` lists what the SMTP server accepted for
    an outside address. Thread-safe; the servers run in their own event loop thread."""

    def __init__(
        self,
        *,
        uidvalidity: int | None = None,
        idle_keepalive: float = 120.0,
        idle_news_delay: float = 0.05,
    ) -> None:
        self.lock = threading.RLock()
        self.idle_keepalive = idle_keepalive
        self.idle_news_delay = idle_news_delay
        self.uidvalidity = uidvalidity or int(time.time())
        self.accounts: dict[str, Account] = {}
        self.captured: list[CapturedMail] = []
        self.listeners: list[Callable[[CapturedMail], None]] = []
        self.sessions: set[ImapSession] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.running: RunningMailServer | None = None

    # -- accounts -------------------------------------------------------------------------
    def add_mailbox(self, address: str, password: str, *, smtp_password: str | None = None) -> None:
        """An account (IMAP login ``address`` / ``password``) with an INBOX. SMTP asks for
        ``smtp_password`` (default: the same password) when it is not empty."""
        key = address.strip().lower()
        with self.lock:
            self.accounts[key] = Account(
                address=key,
                password=password,
                smtp_password=password if smtp_password is None else smtp_password,
                folders={"INBOX": Folder("INBOX", self.uidvalidity)},
            )

    def add_folder(self, address: str, name: str) -> None:
        with self.lock:
            self.accounts[address.lower()].folders[name] = Folder(name, self.uidvalidity)

    def check_login(self, username: str, password: str) -> Account | None:
        with self.lock:
            account = self.accounts.get(username.strip().lower())
        if account is None or account.password != password:
            return None
        return account

    def check_smtp_login(self, username: str, password: str) -> bool:
        with self.lock:
            account = self.accounts.get(username.strip().lower())
        return (
            account is not None
            and bool(account.smtp_password)
            and (account.smtp_password == password)
        )

    def smtp_requires_auth(self) -> bool:
        with self.lock:
            return any(account.smtp_password for account in self.accounts.values())

    def idle_sessions(self) -> int:
        """How many IMAP sessions are in IDLE now (tests wait for it before mail arrives)."""
        with self.lock:
            return sum(1 for session in self.sessions if session.idling)

    def inbox(self, address: str) -> Folder:
        with self.lock:
            return self.accounts[address.lower()].folders["INBOX"]

    # -- mail in --------------------------------------------------------------------------
    def store(
        self,
        folder: Folder,
        raw: bytes,
        *,
        flags: Iterable[str] = (),
        internal_date: datetime | None = None,
    ) -> int:
        """Append ``raw`` to ``folder``; returns its UID. Idle sessions hear of it at once."""
        with self.lock:
            uid = folder.uidnext
            folder.uidnext += 1
            folder.mails.append(
                StoredMail(
                    uid=uid,
                    raw=normalize_crlf(raw),
                    internal_date=internal_date or datetime.now(UTC).astimezone(),
                    flags=set(flags),
                )
            )
        self.changed()
        return uid

    def changed(self) -> None:
        with self.lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.notify()

    def deliver(self, raw: bytes, *, to: Sequence[str] | None = None) -> list[int]:
        """Deliver a mail into the INBOX of each recipient that is a mailbox here (``to``,
        default the mail's To and Cc). Returns the UIDs; raises KeyError when no recipient
        is a mailbox here."""
        if to is None:
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            to = [a for _n, a in getaddresses(msg.get_all("To", []) + msg.get_all("Cc", []))]
        uids = []
        with self.lock:
            for address in to:
                account = self.accounts.get(base_address(address))
                if account is not None:
                    uids.append(self.store(account.folders["INBOX"], raw))
        if not uids:
            raise KeyError(f"no mailbox here for {list(to)}")
        return uids

    def accept(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> None:
        """What the SMTP server does with a mail: local recipients get it in their INBOX,
        the others' copy is captured and shown to the listeners (the simulated customers)."""
        local = [r for r in rcpt_tos if base_address(r) in self.accounts]
        outside = [r for r in rcpt_tos if r not in local]
        if local:
            self.deliver(data, to=local)
        if outside:
            captured = CapturedMail(mail_from, tuple(outside), data, time.time())
            with self.lock:
                self.captured.append(captured)
                listeners = list(self.listeners)
            for listener in listeners:
                try:
                    listener(captured)
                except Exception:
                    log.exception("mail listener failed")

    def sent_to(self, address: str | None = None) -> list[CapturedMail]:
        """What the SMTP server accepted for ``address`` (every outside address if None)."""
        with self.lock:
            if address is None:
                return list(self.captured)
            wanted = address.lower()
            return [c for c in self.captured if wanted in (r.lower() for r in c.rcpt_tos)]

    # -- serving --------------------------------------------------------------------------
    def serve_in_thread(
        self, host: str = "127.0.0.1", imap_port: int = 0, smtp_port: int = 0
    ) -> RunningMailServer:
        """Start both servers in an event loop thread; returns once they accept connections."""
        if self.running is not None:
            return self.running
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run_loop, args=(ready,), name="mail-simulator", daemon=True
        )
        self.thread.start()
        ready.wait(10)
        future = asyncio.run_coroutine_threadsafe(
            self._start(host, imap_port, smtp_port), self.loop
        )
        ports = future.result(10)
        self.running = RunningMailServer(self, host, *ports)
        return self.running

    def _run_loop(self, ready: threading.Event) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    async def _start(self, host: str, imap_port: int, smtp_port: int) -> tuple[int, int]:
        from aiosmtpd.smtp import SMTP

        async def imap_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await ImapSession(self, reader, writer).run()

        imap = await asyncio.start_server(imap_client, host, imap_port, limit=LINE_LIMIT)
        handler = SmtpHandler(self)
        loop = asyncio.get_running_loop()

        def smtp_protocol() -> SMTP:
            # Plain AUTH on loopback is the point here (no TLS in the demo): aiosmtpd warns.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return SMTP(
                    handler,
                    hostname="mail.simulator.invalid",
                    authenticator=handler.authenticate,
                    auth_require_tls=False,
                    loop=loop,
                )

        smtp = await loop.create_server(smtp_protocol, host, smtp_port)
        self.servers = [imap, smtp]
        return imap.sockets[0].getsockname()[1], smtp.sockets[0].getsockname()[1]

    def stop_serving(self, timeout: float = 5.0) -> None:
        """Close both servers and every open connection (clients see the socket close)."""
        loop, thread = self.loop, self.thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            for server in self.servers:
                server.close()
            with self.lock:
                sessions = list(self.sessions)
            for session in sessions:
                session.writer.close()  # its reader sees the end: the session returns
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=2)
            # Still running: SMTP connections (aiosmtpd's tasks end by cancellation).
            tasks = [t for t in tasks if not t.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout)
        except Exception:
            log.warning("mail simulator did not shut down cleanly", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
        self.loop = self.thread = None
        self.servers = []
        self.running = None

    def close(self) -> None:
        self.stop_serving()

    def __enter__(self) -> MailSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Simulated customers


@dataclass(frozen=True)
class MailIdentity:
    local: str
    domain: str
    client: str  # gmail | apple | outlook | thunderbird | iso2022jp
    zone: int  # UTC offset in hours
    subjects: tuple[str, ...]
    signature: str


IDENTITIES: dict[str, MailIdentity] = {
    "en": MailIdentity(
        "sheena.nelson", "gmail.example", "gmail", -7,
        ("Order #48213 - no shipping update", "Question about sizes"), "Sheena",
    ),
    "ja": MailIdentity(
        "hanako.sato", "docomo.example", "iso2022jp", 9,
        ("注文番号48213について", "商品の色について"), "佐藤 花子",
    ),
    "es": MailIdentity(
        "lucia.gomez", "outlook.example", "outlook", 2,
        ("Cambio de talla - pedido 48213", "Consulta sobre envío"), "Lucía",
    ),
    "pt_BR": MailIdentity(
        "joao.pereira", "gmail.example", "gmail", -3,
        ("Prazo de entrega do pedido 48213", "Pagamento com Pix"), "João",
    ),
    "ar": MailIdentity(
        "ahmed.alharbi", "outlook.example", "outlook", 3,
        ("طلب رقم 48213", "استفسار عن الشحن"), "أحمد",
    ),
    "vi": MailIdentity(
        "lan.nguyen", "gmail.example", "gmail", 7,
        ("Đơn hàng 48213 chưa giao", "Hỏi về size giày"), "Lan",
    ),
    "id": MailIdentity(
        "putri.wulandari", "yahoo.example", "thunderbird", 7,
        ("Pesanan 48213 belum sampai", "Tanya warna produk"), "Putri",
    ),
    "de": MailIdentity(
        "jonas.becker", "web.example", "thunderbird", 2,
        ("Bestellung 48213 - Versand?", "Frage zur Garantie"), "Jonas",
    ),
    "fr": MailIdentity(
        "camille.dubois", "icloud.example", "apple", 2,
        ("Commande 48213 arrivée cassée", "Remboursement"), "Camille",
    ),
}  # fmt: skip

# The quote header each client writes above the quoted mail, by language where it localises.
QUOTE_HEADERS = {
    "de": "Am {date_short} um {time} schrieb {name}:",
    "fr": "Le {date_long}, {name} <{address}> a écrit :",
    "es": "El {date_long}, {name} <{address}> escribió:",
}
JA_WEEKDAYS = "月火水木金土日"


@dataclass
class MailCustomer:
    persona: Persona
    identity: MailIdentity
    line: int = 0
    subject_index: int = 0
    own: list[tuple[str, str]] = field(default_factory=list)  # (Message-ID, subject)
    answered: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"{self.identity.local}@{self.identity.domain}"

    @property
    def zone(self) -> timezone:
        return timezone(timedelta(hours=self.identity.zone))


class MailChatter:
    """Simulated customers mailing one mailbox of a :class:`MailSimulator`, in the languages
    of the WhatsApp personas, each with the mail client of their identity.

    They write new mails (some HTML-only, some with a photo or a receipt, the Japanese one in
    ISO-2022-JP), follow up on their own mail, and answer every mail the SMTP server accepted
    for them as their client would: to its Reply-To, "Re:" its subject, In-Reply-To its
    Message-ID, References its References plus its Message-ID, its text quoted under an
    "On ... wrote:" line. Deterministic for a given ``seed`` apart from the Message-IDs of
    :meth:`step`; :meth:`seed_mailbox`'s are fixed, so a second run's seeding is a duplicate.
    """

    def __init__(
        self,
        sim: MailSimulator,
        mailbox: str,
        *,
        seed: int = 0,
        languages: Sequence[str] | None = None,
        shop_name: str = "",
    ) -> None:
        self.sim = sim
        self.mailbox = mailbox.lower()
        self.shop_name = shop_name
        self.rng = random.Random(seed)
        self.seed = seed
        personas = [
            p
            for p in PERSONAS
            if p.language in IDENTITIES and (languages is None or p.language in languages)
        ]
        if not personas:
            raise ValueError(f"no persona speaks any of {languages}")
        self.customers = [MailCustomer(p, IDENTITIES[p.language]) for p in personas]

    # -- what a step does -----------------------------------------------------------------
    def step(self) -> str:
        """One customer answers our latest unanswered mail to them, or writes; returns the
        Message-ID of the mail delivered into the mailbox."""
        waiting = [c for c in self.customers if self.unanswered(c)]
        # People answer a mail soon after it came: those with one to answer go first.
        if waiting and self.rng.random() < 0.8:
            customer = self.rng.choice(waiting)
        else:
            customer = self.rng.choice(self.customers)
        for captured in self.unanswered(customer)[:1]:
            customer.answered.add(str(captured.message["Message-ID"]))
            return self.answer(customer, captured.message)
        if customer.own and self.rng.random() < 0.2:
            message_id, subject = self.rng.choice(customer.own)
            return self.write(customer, customer.persona.follow_up, subject, parent=message_id)
        return self.write_new(customer)

    def unanswered(self, customer: MailCustomer) -> list[CapturedMail]:
        """Our mails to ``customer`` that they have not answered yet, oldest first."""
        return [
            captured
            for captured in self.sim.sent_to(customer.address)
            if str(captured.message["Message-ID"]) not in customer.answered
        ]

    def answer_all(self) -> list[str]:
        """Every customer answers every mail of ours not answered yet (tests, deterministic)."""
        ids = []
        for customer in self.customers:
            for captured in self.unanswered(customer):
                customer.answered.add(str(captured.message["Message-ID"]))
                ids.append(self.answer(customer, captured.message))
        return ids

    def seed_mailbox(self, count: int = 3, *, hours_ago: float = 3.0) -> list[str]:
        """``count`` first mails from different customers, dated earlier today, with fixed
        Message-IDs (a repeated seeding is recognised as the same mails)."""
        ids = []
        now = datetime.now(UTC)
        for index, customer in enumerate(self.customers[:count]):
            moment = now - timedelta(hours=hours_ago * (count - index) / count)
            ids.append(
                self.write_new(
                    customer,
                    moment=moment,
                    message_id=f"<seed.{self.seed}.{index}.{customer.identity.local}"
                    f"@{customer.identity.domain}>",
                    allow_attachment=index == 1,
                )
            )
        return ids

    def write_new(
        self,
        customer: MailCustomer,
        *,
        moment: datetime | None = None,
        message_id: str | None = None,
        allow_attachment: bool = True,
    ) -> str:
        p = customer.persona
        subjects = customer.identity.subjects
        subject = subjects[customer.subject_index % len(subjects)]
        customer.subject_index += 1
        lines = [p.script[(customer.line + k) % len(p.script)] for k in range(2)]
        customer.line += 2
        attachment = None
        if allow_attachment and self.rng.random() < 0.3:
            if self.rng.random() < 0.5:
                colour = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
                attachment = ("photo.png", "image/png", tiny_png(colour, 16))
                lines.append(p.caption)
            else:
                attachment = ("receipt-48213.pdf", "application/pdf", tiny_pdf("Receipt 48213"))
        return self.write(
            customer,
            "\n".join(lines),
            subject,
            moment=moment,
            message_id=message_id,
            attachment=attachment,
        )

    def answer(self, customer: MailCustomer, ours: EmailMessage) -> str:
        """The customer's answer to our mail ``ours``, threaded as their client does."""
        p = customer.persona
        text = self.rng.choice(p.thanks)
        if self.rng.random() < 0.5:
            text += "\n" + p.script[customer.line % len(p.script)]
            customer.line += 1
        reply_to = parseaddr(str(ours.get("Reply-To") or ours.get("From") or ""))[1]
        references = " ".join(
            [*str(ours.get("References") or "").split(), str(ours["Message-ID"])][-20:]
        )
        return self.write(
            customer,
            text,
            str(ours.get("Subject") or ""),
            parent=str(ours["Message-ID"]),
            references=references,
            to=reply_to or self.mailbox,
            quoting=ours,
        )

    # -- composing as a mail client -------------------------------------------------------
    def write(
        self,
        customer: MailCustomer,
        text: str,
        subject: str,
        *,
        parent: str = "",
        references: str = "",
        to: str = "",
        quoting: EmailMessage | None = None,
        moment: datetime | None = None,
        message_id: str | None = None,
        attachment: tuple[str, str, bytes] | None = None,
    ) -> str:
        """Compose one mail of ``customer`` and deliver it into the mailbox."""
        identity = customer.identity
        moment = (moment or datetime.now(UTC)).astimezone(customer.zone)
        if parent:
            subject = self.reply_subject(identity.client, subject)
            references = references or parent
        message_id = message_id or self.message_id(customer)
        body = f"{text}\n\n{identity.signature}"
        quote_text, quote_header = "", ""
        if quoting is not None:
            part = quoting.get_body(preferencelist=("plain", "html"))
            quote_text = str(part.get_content()).strip() if part is not None else ""
            quote_header = self.quote_header(customer, quoting)
        recipient = to or self.mailbox
        if identity.client == "iso2022jp":
            raw = self.compose_japanese(
                customer, body, subject, recipient, moment, message_id, parent, references,
                quote_header, quote_text, attachment,
            )  # fmt: skip
        else:
            raw = self.compose(
                customer, body, subject, recipient, moment, message_id, parent, references,
                quote_header, quote_text, attachment,
            )  # fmt: skip
        self.sim.deliver(raw, to=[recipient])
        if not parent or not quoting:
            customer.own = [*customer.own[-4:], (message_id, subject)]
        return message_id

    def message_id(self, customer: MailCustomer) -> str:
        client = customer.identity.client
        unique = f"{time.time_ns():x}{self.rng.getrandbits(48):012x}"
        if client == "gmail":
            return f"<CA{base64.b32encode(unique.encode()).decode().rstrip('=')}@mail.gmail.com>"
        if client == "apple":
            return f"<{unique[:8].upper()}-{unique[8:12].upper()}-{unique[12:].upper()}@icloud.example>"
        if client == "outlook":
            return f"<OS3P286MB{unique[-16:].upper()}@OS3P286MB.PROD.OUTLOOK.example>"
        return f"<{unique}@{customer.identity.domain}>"

    @staticmethod
    def reply_subject(client: str, subject: str) -> str:
        subject = " ".join(subject.split())
        bare = re.sub(r"^\s*((re|aw|sv|antw)\s*:\s*)+", "", subject, flags=re.IGNORECASE)
        return ("RE: " if client == "outlook" else "Re: ") + bare

    def quote_header(self, customer: MailCustomer, ours: EmailMessage) -> str:
        name, address = parseaddr(str(ours.get("From") or ""))
        name = name or self.shop_name or address
        sent = ours["Date"].datetime if ours.get("Date") is not None else datetime.now(UTC)
        sent = sent.astimezone(customer.zone)
        language = customer.persona.language
        client = customer.identity.client
        if client == "iso2022jp":
            return (
                f"{sent.year}年{sent.month}月{sent.day}日({JA_WEEKDAYS[sent.weekday()]}) "
                f"{sent:%H:%M} {name} <{address}>:"
            )
        if client == "outlook":
            return (
                "________________________________\n"
                f"From: {name} <{address}>\nSent: {sent:%A, %B} {sent.day}, {sent:%Y %I:%M %p}\n"
                f"To: {customer.persona.name} <{customer.address}>\n"
                f"Subject: {ours.get('Subject', '')}"
            )
        if language in QUOTE_HEADERS:
            return QUOTE_HEADERS[language].format(
                date_short=f"{sent:%d.%m.%y}",
                time=f"{sent:%H:%M}",
                date_long=f"{sent.day} {MONTHS[sent.month - 1].lower()}. {sent.year} {sent:%H:%M}",
                name=name,
                address=address,
            )
        return f"On {sent:%a}, {sent.day} {sent:%b %Y} at {sent:%H:%M}, {name} <{address}> wrote:"

    @staticmethod
    def quoted_lines(text: str) -> str:
        return "\n".join(("> " + line) if line else ">" for line in text.splitlines())

    def compose(
        self,
        customer: MailCustomer,
        body: str,
        subject: str,
        to: str,
        moment: datetime,
        message_id: str,
        parent: str,
        references: str,
        quote_header: str,
        quote_text: str,
        attachment: tuple[str, str, bytes] | None,
    ) -> bytes:
        identity = customer.identity
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = formataddr((customer.persona.name, customer.address))
        msg["To"] = formataddr((self.shop_name, to)) if self.shop_name else to
        msg["Subject"] = subject
        msg["Date"] = format_datetime(moment)
        msg["Message-ID"] = message_id
        if parent:
            msg["In-Reply-To"] = parent
            msg["References"] = references
        if identity.client == "apple":
            msg["X-Mailer"] = "Apple Mail (2.3774.600.62)"
        elif identity.client == "thunderbird":
            msg["User-Agent"] = "Mozilla Thunderbird"
        elif identity.client == "outlook":
            msg["Thread-Topic"] = re.sub(r"^(RE|Re): ", "", subject)
        msg["MIME-Version"] = "1.0"
        html = self.html(body, quote_header, quote_text, identity.client)
        if identity.client == "apple" or (identity.client == "gmail" and self.rng.random() < 0.2):
            msg.set_content(html, subtype="html")  # HTML only, as Apple Mail often sends
        else:
            plain = body
            if quote_header:
                plain += f"\n\n{quote_header}\n"
                if identity.client == "outlook":
                    plain += "\n" + quote_text + "\n"
                else:
                    plain += "\n" + self.quoted_lines(quote_text) + "\n"
            msg.set_content(plain)
            if identity.client in ("gmail", "outlook"):
                msg.add_alternative(html, subtype="html")
        if attachment is not None:
            filename, mime_type, content = attachment
            maintype, subtype = mime_type.split("/", 1)
            msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
        return msg.as_bytes()

    @staticmethod
    def html(body: str, quote_header: str, quote_text: str, client: str) -> str:
        from html import escape

        paragraphs = "".join(
            f"<div>{escape(line) if line else '<br>'}</div>" for line in body.split("\n")
        )
        if not quote_header:
            return f'<html><body style="overflow-wrap: break-word;">{paragraphs}</body></html>'
        quoted_html = "<br>".join(escape(line) for line in quote_text.splitlines())
        header_html = "<br>".join(escape(line) for line in quote_header.splitlines())
        if client == "apple":
            quote = (
                f'<div><br><blockquote type="cite"><div>{header_html}</div><br>'
                f"<div>{quoted_html}</div></blockquote></div>"
            )
        elif client == "outlook":
            quote = (
                '<hr style="display:inline-block;width:98%"><div id="divRplyFwdMsg">'
                f"{header_html}</div><div>{quoted_html}</div>"
            )
        else:
            quote = (
                f'<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">{header_html}'
                '<br></div><blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;'
                f'border-left:1px solid rgb(204,204,204);padding-left:1ex">{quoted_html}'
                "</blockquote></div>"
            )
        return f'<html><body><div dir="ltr">{paragraphs}</div>{quote}</body></html>'

    def compose_japanese(
        self,
        customer: MailCustomer,
        body: str,
        subject: str,
        to: str,
        moment: datetime,
        message_id: str,
        parent: str,
        references: str,
        quote_header: str,
        quote_text: str,
        attachment: tuple[str, str, bytes] | None,
    ) -> bytes:
        """A Japanese client's mail: ISO-2022-JP text (7bit), headers as ISO-2022-JP
        encoded words, as Becky! or a carrier's mail app still writes them."""
        from email.mime.application import MIMEApplication
        from email.mime.image import MIMEImage
        from email.mime.multipart import MIMEMultipart

        plain = body
        if quote_header:
            plain += f"\n\n{quote_header}\n\n{self.quoted_lines(quote_text)}\n"
        # Characters outside JIS X 0208 (an emoji) cannot travel in ISO-2022-JP: dropped.
        plain = plain.encode("iso2022_jp", "ignore").decode("iso2022_jp")
        text_part = MIMEText(plain, "plain", "iso-2022-jp")
        msg: Message
        if attachment is not None:
            filename, mime_type, content = attachment
            msg = MIMEMultipart()
            msg.attach(text_part)
            if mime_type.startswith("image/"):
                file_part: Message = MIMEImage(content, mime_type.split("/", 1)[1])
            else:
                file_part = MIMEApplication(content, mime_type.split("/", 1)[1])
            file_part.add_header("Content-Disposition", "attachment", filename=filename)
            msg.attach(file_part)
        else:
            msg = text_part
        name = Header(customer.persona.name, "iso-2022-jp").encode()
        msg["From"] = f"{name} <{customer.address}>"
        msg["To"] = to
        safe_subject = subject.encode("iso2022_jp", "ignore").decode("iso2022_jp")
        msg["Subject"] = Header(safe_subject, "iso-2022-jp").encode()
        msg["Date"] = format_datetime(moment)
        msg["Message-ID"] = message_id
        if parent:
            msg["In-Reply-To"] = parent
            msg["References"] = references
        msg["X-Mailer"] = "Becky! ver. 2.81.04"
        return msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
