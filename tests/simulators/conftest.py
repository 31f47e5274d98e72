"""The Messenger simulator fixtures (a simulator, a webhook receiver and a provider wired to
them), shared by the Messenger simulator and User Profile API tests."""

from tests.simulators.test_messenger_simulator import (  # noqa: F401
    make_world,
    receivers,
    world,
)
