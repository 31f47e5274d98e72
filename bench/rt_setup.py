"""Bulk setup for the real-time benchmarks (B3, B6), run against the bench database:
``python -m bench.rt_setup SPEC.json OUT.json`` with the bench environment.

SPEC: {"agents": N, "supervisors": [index, …], "teams": {"name": [agent index, ...]},
       "channels": [{"tag": str, "phone": str, "visibility": str, "team": name | null}]}
OUT:  {"user_ids": [...], "tokens": [...], "channels": {tag: {"id", "webhook_path", "phone"}}}

Users get no usable password and one API token each (for the WebSocket's Bearer auth); creating
thousands through ``madoguchi user add`` would take minutes."""

from __future__ import annotations

import json
import os
import secrets
import sys


def main(spec_path: str, out_path: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "madoguchi.settings")
    import django

    django.setup()
    from django.db import transaction

    from madoguchi.actions.channels import do_create_channel
    from madoguchi.actions.users import TOKEN_PREFIX, token_digest
    from madoguchi.models import ApiToken, Team, User

    from .payloads import APP_SECRET, WABA_ID

    spec = json.loads(open(spec_path).read())
    count = int(spec["agents"])
    supervisors = set(spec.get("supervisors", []))
    with transaction.atomic():
        users = []
        for n in range(count):
            role = "supervisor" if n in supervisors else "agent"
            user = User(username=f"user{n:05d}", role=role, display_name=f"User {n}")
            user.set_unusable_password()
            users.append(user)
        users = User.objects.bulk_create(users, batch_size=500)
        if not all(u.pk for u in users):  # backends without RETURNING on bulk insert
            by_name = dict(User.objects.values_list("username", "id"))
            for user in users:
                user.pk = user.id = by_name[user.username]
        tokens = [TOKEN_PREFIX + secrets.token_urlsafe(32) for _ in users]
        ApiToken.objects.bulk_create(
            [
                ApiToken(user=u, name="bench", digest=token_digest(t), prefix=t[:10])
                for u, t in zip(users, tokens, strict=True)
            ],
            batch_size=500,
        )
        teams = {}
        through = User.teams.through
        for name, members in spec.get("teams", {}).items():
            team = Team.objects.create(name=name)
            teams[name] = team
            through.objects.bulk_create(
                [through(user_id=users[i].pk, team_id=team.pk) for i in members], batch_size=500
            )
    channels = {}
    for item in spec["channels"]:
        channel = do_create_channel(
            None,
            kind="whatsapp",
            name=f"Bench {item['tag']}",
            business_handle=item["phone"],
            account_handle=WABA_ID,
            api_base="http://127.0.0.1:9",
            secrets={"access_token": "t", "app_secret": APP_SECRET, "verify_token": "v"},
            visibility=item["visibility"],
            team=teams.get(item.get("team") or ""),
        )
        channels[item["tag"]] = {
            "id": channel.pk,
            "webhook_path": channel.webhook_path,
            "phone": item["phone"],
        }
    with open(out_path, "w") as handle:
        json.dump(
            {"user_ids": [u.pk for u in users], "tokens": tokens, "channels": channels}, handle
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
