"""``madoguchi demo``: the whole product in one process with no account anywhere.

Embedded SQLite in the data directory, the WhatsApp Cloud API simulator on a free local port,
an in-process worker, seeded users and simulated customers writing in several languages.
Running it again reuses the data directory (users, channel, history) and points the channel at
the new simulator.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

DEMO_PASSWORD = "madoguchi-demo"
DEMO_USERS = [
    ("admin", "admin", "Admin"),
    ("sora", "supervisor", "Sora Suzuki"),
    ("aiko", "agent", "Aiko Sato"),
    ("ben", "agent", "Ben Carter"),
    ("wendy", "watcher", "Wendy Watanabe"),
]
PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
DISPLAY_NUMBER = "15550783881"
APP_SECRET = "demo-app-secret-not-for-production"
ACCESS_TOKEN = "demo-access-token"
VERIFY_TOKEN = "demo-verify-token"

log = logging.getLogger(__name__)


def seed_users() -> None:
    from madoguchi.actions.users import do_create_user
    from madoguchi.models import User

    for username, role, name in DEMO_USERS:
        if not User.objects.filter(username=username).exists():
            do_create_user(
                None,
                username,
                role=role,
                password=DEMO_PASSWORD,
                display_name=name,
                team_names=["Support"] if role in ("agent", "supervisor") else [],
                check_password_strength=False,
            )


CANNED = [
    ("thanks", "Thank you for contacting us! I'll look into this right away."),
    ("order", "Could you send me your order number, please?"),
    ("arigato", "お問い合わせありがとうございます。確認いたしますので、少々お待ちください。"),
    ("bye", "Glad I could help. Have a great day!"),
]


def seed_canned_replies() -> None:
    from madoguchi.models import CannedReply

    for shortcut, text in CANNED:
        CannedReply.objects.get_or_create(shortcut=shortcut, defaults={"text": text})


def demo_channel(api_base: str) -> Any:
    from madoguchi.actions.channels import do_create_channel
    from madoguchi.models import Channel

    channel = Channel.objects.filter(kind="whatsapp", business_handle=PHONE_NUMBER_ID).first()
    if channel is None:
        return do_create_channel(
            None,
            kind="whatsapp",
            name="Demo Shop WhatsApp",
            business_handle=PHONE_NUMBER_ID,
            account_handle=WABA_ID,
            display_handle=DISPLAY_NUMBER,
            api_base=api_base,
            secrets={
                "access_token": ACCESS_TOKEN,
                "app_secret": APP_SECRET,
                "verify_token": VERIFY_TOKEN,
            },
        )
    channel.api_base = api_base
    channel.save(update_fields=["api_base"])
    return channel


def seed_history(sim: Any) -> None:
    """A few conversations that already happened: one whose window closed yesterday."""
    from madoguchi.models import Conversation

    if Conversation.objects.exists():
        return
    two_days_ago = time.time() - 30 * 3600
    sim.customer_sends(
        PHONE_NUMBER_ID,
        "85291234567",
        "Chan Tai Man",
        "Hi, do you ship to Hong Kong? I'd like two of the blue mugs.",
        timestamp=two_days_ago,
    )


def run_demo(host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn
    from django.conf import settings
    from django.core.management import call_command

    from madoguchi.actions.jobs import enqueue
    from madoguchi.simulators.whatsapp import CustomerChatter, WhatsAppSimulator

    logging.getLogger("madoguchi").setLevel(logging.WARNING)
    os.environ["MADOGUCHI_INPROCESS_WORKER"] = "1"
    call_command("migrate", interactive=False, verbosity=0)
    seed_users()
    seed_canned_replies()

    sim = WhatsAppSimulator(status_delays=(0.4, 1.0, 3.0), auto_read=True)
    running = sim.serve_in_thread()
    channel = demo_channel(running.url)
    local_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    sim.add_number(
        phone_number_id=PHONE_NUMBER_ID,
        waba_id=WABA_ID,
        display_phone_number=DISPLAY_NUMBER,
        access_token=ACCESS_TOKEN,
        app_secret=APP_SECRET,
        webhook_url=f"http://{local_host}:{port}{channel.webhook_path}",
    )
    enqueue("sync_templates", {"channel_id": channel.pk}, key=f"sync:{channel.pk}")

    stop = threading.Event()
    server = uvicorn.Server(
        uvicorn.Config(
            "madoguchi.asgi:application", host=host, port=port, lifespan="on", log_level="warning"
        )
    )

    def customers() -> None:
        while not server.started and not stop.is_set():
            time.sleep(0.1)
        if stop.is_set():
            return
        seed_history(sim)
        # A fixed seed: a second run of the demo meets the same customers again.
        chatter = CustomerChatter(sim, PHONE_NUMBER_ID, seed=7)
        for _ in range(6):  # a morning's first messages
            chatter.step()
            time.sleep(0.5)
        while not stop.wait(8.0 + 12.0 * chatter.rng.random()):
            try:
                chatter.step()
            except Exception:
                log.warning("simulated customer failed to write", exc_info=True)

    threading.Thread(target=customers, name="demo-customers", daemon=True).start()

    print(
        f"\n  Madoguchi demo: http://{local_host}:{port}/\n"
        f"  Data directory: {settings.DATA_DIR}\n"
        f"  WhatsApp simulator: {running.url}\n\n"
        f"  Logins (password for all: {DEMO_PASSWORD}):\n"
        + "".join(f"    {u:<6} {role}\n" for u, role, _ in DEMO_USERS)
        + "\n  Ctrl-C stops it.\n",
        flush=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C after its graceful shutdown
    finally:
        stop.set()
        running.stop()
        sim.close()
        print("Madoguchi demo stopped.", flush=True)
