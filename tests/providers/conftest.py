"""Real mail servers for the email provider's tests: a private Dovecot and an aiosmtpd sink."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.email_servers import MAILBOX, MAILBOX_PASSWORD, SmtpSink, dovecot, smtp_sink

__all__ = ["MAILBOX", "MAILBOX_PASSWORD", "dovecot", "smtp_auth_sink", "smtp_sink"]


@pytest.fixture
def smtp_auth_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(login=MAILBOX, password="smtp-secret")
    sink.start()
    yield sink
    sink.stop()
