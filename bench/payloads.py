"""WhatsApp-shaped webhook bodies for the benchmarks: about 1 KB, signed as Meta signs them."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from typing import Any

PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
APP_SECRET = "bench-app-secret"
TEXTS = [
    "Hello! I ordered a pair of running shoes last week and haven't had a shipping update yet. "
    "Could you check order 48213 for me, please? I need them before the marathon on Sunday.",
    "こんにちは。先週注文した商品がまだ届いていません。注文番号は48213です。"
    "配送状況を確認していただけますか。日曜日までに必要なので、よろしくお願いいたします。",
    "Hola, buenas tardes. Compré una chaqueta y me llegó con la talla equivocada. "
    "¿Puedo cambiarla por una talla M? El número de pedido es 48213. ¡Gracias!",
    "Oi, tudo bem? Fiz um pedido ontem e queria saber o prazo de entrega para São Paulo. "
    "O número do pedido é 48213. Obrigado pela atenção!",
]


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def envelope(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def text_message(wa_id: str, message_id: str, text: str, ts: int) -> dict[str, Any]:
    return {
        "from": wa_id,
        "id": message_id,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": text},
    }


def messages_body(items: list[tuple[str, str, str]], ts: int | None = None) -> bytes:
    """One body with several messages: items of (wa_id, message_id, text)."""
    ts = ts or int(time.time())
    contacts = [
        {"profile": {"name": f"Customer {w[-4:]}"}, "wa_id": w} for w in {i[0] for i in items}
    ]
    messages = [text_message(w, m, t, ts) for w, m, t in items]
    return compact(envelope({"contacts": contacts, "messages": messages}))


def status_body(message_id: str, status: str, recipient: str) -> bytes:
    return compact(
        envelope(
            {
                "statuses": [
                    {
                        "id": message_id,
                        "status": status,
                        "timestamp": str(int(time.time())),
                        "recipient_id": recipient,
                        "pricing": {
                            "billable": True,
                            "pricing_model": "PMP",
                            "type": "regular",
                            "category": "service",
                        },
                    }
                ]
            }
        )
    )


def ingest_mix(count: int, seed: int = 1) -> list[bytes]:
    """A realistic mix for B1: 60% single messages, 10% batches of 5, 25% statuses for unknown
    (already-sent) messages, 5% exact duplicates of an earlier body."""
    rng = random.Random(seed)
    bodies: list[bytes] = []
    customers = [f"8190{n:08d}" for n in range(2000)]
    for n in range(count):
        roll = rng.random()
        if roll < 0.60 or not bodies:
            bodies.append(
                messages_body([(rng.choice(customers), f"wamid.b1.{seed}.{n}", rng.choice(TEXTS))])
            )
        elif roll < 0.70:
            bodies.append(
                messages_body(
                    [
                        (rng.choice(customers), f"wamid.b1.{seed}.{n}.{k}", rng.choice(TEXTS))
                        for k in range(5)
                    ]
                )
            )
        elif roll < 0.95:
            bodies.append(
                status_body(
                    f"wamid.out.{seed}.{n}",
                    rng.choice(["sent", "delivered", "read"]),
                    rng.choice(customers),
                )
            )
        else:
            bodies.append(rng.choice(bodies))
    return bodies
