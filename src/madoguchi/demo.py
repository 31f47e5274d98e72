"""``madoguchi demo``: the whole product in one process with no account anywhere.

Embedded SQLite in the data directory, a simulator for each platform (WhatsApp Cloud API, Viber,
Messenger, and an IMAP + SMTP mail server for Email) on free local ports, an in-process worker, seeded users and simulated customers
writing in several languages on every channel. Running it again reuses the data directory
(users, channels, history) and points the channels at the new simulators.
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
VIBER_TOKEN = "demo-viber-auth-token"
VIBER_BOT_ID = "pa:5550783881000001"
MESSENGER_PAGE_ID = "104850783881001"
MESSENGER_APP_ID = "1234567890123456"
MESSENGER_TOKEN = "demo-page-access-token"
MESSENGER_SECRET = "demo-messenger-app-secret"
MESSENGER_VERIFY = "demo-messenger-verify-token"
MAILBOX = "support@demo-shop.example"
MAILBOX_PASSWORD = "demo-mailbox-password"

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


def demo_channel(kind: str, business_handle: str, api_base: str, **fields: Any) -> Any:
    """The demo's channel of ``kind``, created on first run (without asking the simulator: it
    is the demo's own), pointed at this run's simulator after (its API base, and for email the
    options, which hold the servers' ports)."""
    from madoguchi.actions.channels import do_create_channel
    from madoguchi.models import Channel

    channel = Channel.objects.filter(kind=kind, business_handle=business_handle).first()
    if channel is None:
        return do_create_channel(
            None, kind=kind, business_handle=business_handle, api_base=api_base, **fields
        )
    # This run's simulator: its address (and for mail, its ports, which are options).
    channel.api_base = api_base
    channel.options = {**channel.options, **fields.get("options", {})}
    channel.save(update_fields=["api_base", "options"])
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


class Simulators:
    """The platform simulators of one demo run, each serving on a free local port, and the
    simulated customers who write to them."""

    def __init__(self, host: str, port: int) -> None:
        from madoguchi.simulators.mail import MailChatter, MailSimulator
        from madoguchi.simulators.messenger import MessengerSimulator
        from madoguchi.simulators.viber import ViberSimulator
        from madoguchi.simulators.whatsapp import WhatsAppSimulator

        self.base = f"http://{host}:{port}"
        self.whatsapp = WhatsAppSimulator(status_delays=(0.4, 1.0, 3.0), auto_read=True)
        self.viber = ViberSimulator(receipt_delays=(0.6, 2.0))
        self.messenger = MessengerSimulator(receipt_delays=(0.1, 0.6, 2.5))
        self.mail = MailSimulator()
        self.mail.add_mailbox(MAILBOX, MAILBOX_PASSWORD)
        # A few customer mails wait in the mailbox before Madoguchi first reads it.
        self.mail_customers = MailChatter(self.mail, MAILBOX, seed=17, shop_name="Demo Shop")
        self.mail_customers.seed_mailbox(3)
        self.running = [
            self.whatsapp.serve_in_thread(),
            self.viber.serve_in_thread(),
            self.messenger.serve_in_thread(),
            self.mail.serve_in_thread(host),
        ]
        self.channels = self.connect()

    def urls(self) -> list[tuple[str, str]]:
        """(name, address) of every simulator, for the banner."""
        whatsapp, viber, messenger, mail = self.running
        return [
            ("WhatsApp", whatsapp.url),
            ("Viber", viber.url),
            ("Messenger", messenger.url),
            ("Email (IMAP)", mail.url),
            ("Email (SMTP)", mail.smtp_url),
        ]

    def connect(self) -> list[Any]:
        wa_url, viber_url, messenger_url = (r.url for r in self.running[:3])
        mail = self.running[3]
        whatsapp = demo_channel(
            "whatsapp",
            PHONE_NUMBER_ID,
            wa_url,
            name="Demo Shop WhatsApp",
            account_handle=WABA_ID,
            display_handle=DISPLAY_NUMBER,
            secrets={
                "access_token": ACCESS_TOKEN,
                "app_secret": APP_SECRET,
                "verify_token": VERIFY_TOKEN,
            },
        )
        self.whatsapp.add_number(
            phone_number_id=PHONE_NUMBER_ID,
            waba_id=WABA_ID,
            display_phone_number=DISPLAY_NUMBER,
            access_token=ACCESS_TOKEN,
            app_secret=APP_SECRET,
            webhook_url=self.base + whatsapp.webhook_path,
        )
        viber = demo_channel(
            "viber",
            VIBER_BOT_ID,
            viber_url,
            name="Demo Shop Viber",
            display_handle="Madoguchi Demo Shop",
            secrets={"auth_token": VIBER_TOKEN},
            options={
                "sender_name": "Demo Shop",
                "welcome_text": "Welcome to the Demo Shop! Write to us any time.",
            },
        )
        # The bot's webhook is preset (as if set_webhook ran when the channel was connected).
        self.viber.add_account(
            VIBER_TOKEN, account_id=VIBER_BOT_ID, webhook_url=self.base + viber.webhook_path
        )
        messenger = demo_channel(
            "messenger",
            MESSENGER_PAGE_ID,
            messenger_url,
            name="Demo Shop Messenger",
            display_handle="Madoguchi Demo Shop",
            secrets={
                "page_access_token": MESSENGER_TOKEN,
                "app_secret": MESSENGER_SECRET,
                "verify_token": MESSENGER_VERIFY,
            },
            options={"app_id": MESSENGER_APP_ID, "human_agent_tag": True},
        )
        self.messenger.add_page(
            page_id=MESSENGER_PAGE_ID,
            access_token=MESSENGER_TOKEN,
            app_secret=MESSENGER_SECRET,
            app_id=MESSENGER_APP_ID,
            webhook_url=self.base + messenger.webhook_path,
        )
        # Option and secret names as channel set-up stores them (rules/channel_setup.py).
        email = demo_channel(
            "email",
            MAILBOX,
            "",
            name="Demo Shop Email",
            display_handle=MAILBOX,
            secrets={"imap_password": MAILBOX_PASSWORD, "smtp_password": MAILBOX_PASSWORD},
            options={
                "imap_host": mail.host,
                "imap_port": mail.imap_port,
                "imap_username": MAILBOX,
                "imap_security": "none",
                "smtp_host": mail.host,
                "smtp_port": mail.smtp_port,
                "smtp_username": MAILBOX,
                "smtp_security": "none",
                "from_name": "Demo Shop",
                # The first run reads the mails that were waiting (a real mailbox starts from
                # now by default). Each run's simulator has a new UIDVALIDITY, so a later run
                # reads its mailbox again; the seeded mails' fixed Message-IDs are duplicates.
                "imap_start": "all",
            },
        )
        return [whatsapp, viber, messenger, email]

    def chatters(self) -> list[Any]:
        """Customers on every channel; a fixed seed: a second run meets the same people."""
        from madoguchi.simulators.messenger import MessengerChatter
        from madoguchi.simulators.viber import ViberChatter
        from madoguchi.simulators.whatsapp import CustomerChatter

        return [
            CustomerChatter(self.whatsapp, PHONE_NUMBER_ID, seed=7),
            ViberChatter(self.viber, VIBER_TOKEN, seed=11),
            MessengerChatter(self.messenger, MESSENGER_PAGE_ID, seed=13),
            self.mail_customers,
        ]

    def close(self) -> None:
        for running in self.running:
            running.stop()
        for sim in (self.whatsapp, self.viber, self.messenger, self.mail):
            sim.close()


def run_demo(host: str = "127.0.0.1", port: int = 8000) -> None:
    import random

    import uvicorn
    from django.conf import settings
    from django.core.management import call_command

    from madoguchi.actions.jobs import enqueue
    from madoguchi.providers.registry import provider_class

    logging.getLogger("madoguchi").setLevel(logging.WARNING)
    os.environ["MADOGUCHI_INPROCESS_WORKER"] = "1"
    call_command("migrate", interactive=False, verbosity=0)
    seed_users()
    seed_canned_replies()

    local_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    if "MADOGUCHI_PUBLIC_URL" not in os.environ:
        # Platforms fetch outbound files (Viber) from links on this address.
        settings.PUBLIC_URL = f"http://{local_host}:{port}"
    sims = Simulators(local_host, port)
    for channel in sims.channels:
        if provider_class(channel.kind).capabilities.has_templates:
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
        seed_history(sims.whatsapp)
        chatters = sims.chatters()
        rng = random.Random(3)
        for _ in range(4):  # a morning's first messages, on every channel
            for chatter in chatters:
                chatter.step()
                time.sleep(0.3)
        while not stop.wait(6.0 + 10.0 * rng.random()):
            try:
                rng.choice(chatters).step()
            except Exception:
                log.warning("simulated customer failed to write", exc_info=True)

    threading.Thread(target=customers, name="demo-customers", daemon=True).start()

    print(
        f"\n  Madoguchi demo: http://{local_host}:{port}/\n"
        f"  Data directory: {settings.DATA_DIR}\n"
        + "".join(f"  {name} simulator: {url}\n" for name, url in sims.urls())
        + f"\n  Logins (password for all: {DEMO_PASSWORD}):\n"
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
        sims.close()
        print("Madoguchi demo stopped.", flush=True)
