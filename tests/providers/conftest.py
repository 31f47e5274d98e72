"""Real mail servers for the email provider's tests: a private Dovecot and an aiosmtpd sink."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.email_servers import Dovecot, SmtpSink, dovecot_available

MAILBOX = "support@example.test"
MAILBOX_PASSWORD = "imap-secret"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def smtp_auth_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(login=MAILBOX, password="smtp-secret")
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    reason = dovecot_available()
    if reason:
        pytest.skip(reason)
    server = Dovecot({MAILBOX: MAILBOX_PASSWORD})
    server.start()
    yield server
    server.cleanup()
