"""The Viber and Messenger fixtures (tests/channels_helpers.py) for the webhook tests."""

from tests.channels_helpers import (  # noqa: F401
    messenger_channel,
    messenger_sim,
    send_attachment,
    viber_channel,
    viber_sim,
)
