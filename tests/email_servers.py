"""Real mail servers for the email channel's tests (shared/platforms/EMAIL-TEST-SERVER.md).

``Dovecot``: a private Dovecot IMAP instance on a free port of 127.0.0.1 with its own
configuration, run by root (its login processes drop to Debian's ``dovenull``/``dovecot``
users) with the mail owned by ``nobody``/``nogroup``. ``SmtpSink``: aiosmtpd's ``Controller``
capturing what Madoguchi sends, answering each command as the test tells it to.
"""

from __future__ import annotations

import email
import email.policy
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.helpers import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"

# The mailbox the ``dovecot`` fixture holds.
MAILBOX = "support@example.test"
MAILBOX_PASSWORD = "imap-secret"


def wait_for_port(port: int, *, up: bool, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not come {'up' if up else 'down'}")


def dovecot_available() -> str:
    """Why the Dovecot tests cannot run here, or "" when they can."""
    if not os.path.exists(DOVECOT):
        return "dovecot-imapd is not installed (scripts/setup installs it)"
    if os.geteuid() != 0:
        return "the Dovecot master must run as root (EMAIL-TEST-SERVER.md)"
    return ""


class Dovecot:
    """One private Dovecot; ``users`` maps addresses to passwords."""

    def __init__(self, users: dict[str, str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="madoguchi-dovecot-"))
        self.port = free_port()
        self.users = users
        self.conf = self.dir / "dovecot.conf"
        uid = pwd.getpwnam(MAIL_USER).pw_uid
        gid = grp.getgrnam(MAIL_GROUP).gr_gid
        (self.dir / "mail").mkdir()
        (self.dir / "users").write_text(
            "".join(f"{user}:{{PLAIN}}{password}\n" for user, password in users.items())
        )
        self.conf.write_text(
            f"""base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
# No stats service: login processes otherwise wait 5 s for it at shutdown.
stats_writer_socket_path =
# Refused logins answer at once (the default 2 s delay only slows the tests).
auth_failure_delay = 0
mail_location = maildir:{self.dir}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.dir}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
}}
"""
        )
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, uid, gid)
        self.dir.chmod(0o755)

    def start(self) -> None:
        # The master daemonises: its output goes to a file, or the pipe would stay open.
        with (self.dir / "start.log").open("ab") as out:
            subprocess.run(
                [DOVECOT, "-c", str(self.conf)], check=True, stdout=out, stderr=out, timeout=30
            )
        wait_for_port(self.port, up=True)
        deadline = time.monotonic() + 10
        while not self.master_pid() and time.monotonic() < deadline:
            time.sleep(0.01)

    def master_pid(self) -> int:
        """The master's process id (0 while it is not written yet)."""
        path = self.dir / "run" / "master.pid"
        text = path.read_text().strip() if path.exists() else ""
        return int(text) if text.isdigit() else 0

    def stop(self) -> None:
        """Stop the master and every process it started (open IMAP sessions die too).

        SIGTERM first (clients get their BYE); Dovecot 2.3's master then sleeps several
        seconds before it exits, so after a short grace the whole process group (the master
        calls setsid) is killed: to a client that is a server going away, as in a crash."""
        pid = self.master_pid()
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        time.sleep(0.3)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        (self.dir / "run" / "master.pid").unlink(missing_ok=True)
        wait_for_port(self.port, up=False)

    def doveadm(self, *args: str) -> str:
        done = subprocess.run(
            [DOVEADM, "-c", str(self.conf), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout

    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def customer_mail(number: int, *, to: str = "support@example.test") -> bytes:
    """A small customer mail with a distinct Message-ID, as a client would APPEND it."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"Customer {number} <customer{number}@customer.example>"
    msg["To"] = to
    msg["Subject"] = f"Question {number}"
    msg["Message-ID"] = f"<q{number}.{time.time_ns()}@customer.example>"
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg.set_content(f"Hello, this is question {number}.")
    return msg.as_bytes()


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class SinkHandler:
    """Stores every accepted envelope; ``rcpt_reply`` / ``data_reply`` make the sink refuse."""

    received: list[Captured] = field(default_factory=list)
    rcpt_reply: str = ""
    data_reply: str = ""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        self.received.append(
            Captured(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        )
        return "250 Message accepted for delivery"


class SmtpSink:
    """aiosmtpd on 127.0.0.1 with optional AUTH (``login``/``password``) over plain SMTP."""

    def __init__(self, *, login: str = "", password: str = "") -> None:
        self.handler = SinkHandler()
        self.port = free_port()
        self.login = login
        self.password = password
        kwargs = {}
        if login:
            kwargs = {
                "authenticator": self.authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.login
            and auth_data.password.decode() == self.password
        )
        # handled=False: aiosmtpd itself answers "535 5.7.8" to a refused login.
        return AuthResult(success=ok, handled=False)

    @property
    def received(self) -> list[Captured]:
        return self.handler.received

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


# -- fixtures (import them into a test module or conftest to use them) ------------------------


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """An SMTP sink without authentication on a free port."""
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """A private Dovecot holding MAILBOX (password MAILBOX_PASSWORD); the test is skipped where
    Dovecot cannot run."""
    reason = dovecot_available()
    if reason:
        pytest.skip(reason)
    server = Dovecot({MAILBOX: MAILBOX_PASSWORD})
    server.start()
    yield server
    server.cleanup()
