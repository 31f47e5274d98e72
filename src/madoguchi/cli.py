"""The ``madoguchi`` command (SPEC §4)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from madoguchi.rules.channel_setup import SETUP, KindSetup


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "madoguchi.settings")
    import django

    django.setup()


def fail(message: str, code: int = 2) -> None:
    print(f"madoguchi: {message}", file=sys.stderr)
    raise SystemExit(code)


def cmd_migrate(args: argparse.Namespace) -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=1 if args.verbose else 0)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn
    from django.conf import settings

    if not settings.REDIS_URL and not args.no_worker:
        # Without Redis, events only reach sockets from inside this process: work here too.
        os.environ["MADOGUCHI_INPROCESS_WORKER"] = "1"
    try:
        uvicorn.run(
            "madoguchi.asgi:application",
            host=args.host,
            port=args.port,
            lifespan="on",
            log_level="warning",
            # At log level "warning" uvicorn's access lines are never printed, but with the
            # access log on it still builds each one's client and path strings (bench B1).
            access_log=False,
            proxy_headers=True,
        )
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C after its graceful shutdown


def cmd_worker(args: argparse.Namespace) -> None:
    from django.conf import settings

    from madoguchi import gcpolicy
    from madoguchi.realtime import wakeup
    from madoguchi.worker import Worker

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        wakeup.local_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wakeup.listen(stop)
    gcpolicy.install(settings.GC_FULL_SECONDS)
    Worker().run_forever(stop)


def cmd_user_add(args: argparse.Namespace) -> None:
    from madoguchi.actions.users import do_create_user
    from madoguchi.errors import MadoguchiError

    try:
        user, password = do_create_user(
            None,
            args.name,
            role=args.role,
            password=args.password,
            team_names=args.team or [],
        )
    except MadoguchiError as exc:
        fail(exc.message)
    print(f"created {user.username} ({user.role})")
    if args.password is None:
        print(f"password: {password}")


def cmd_token_create(args: argparse.Namespace) -> None:
    from madoguchi.actions.users import do_create_token
    from madoguchi.models import User

    user = User.objects.filter(username=args.name, is_active=True).first()
    if user is None:
        fail(f"no active user {args.name!r}")
    print(do_create_token(None, user, args.label or "cli"))


def cmd_channel_add(args: argparse.Namespace) -> None:
    """``madoguchi channel add <kind> ...``: the fields of rules.channel_setup as flags; the
    credentials are checked against the platform before anything is saved (unless
    ``--no-check``), then the webhook is registered where Madoguchi does it (Viber)."""
    from django.conf import settings

    from madoguchi.actions.channels import check_create_channel
    from madoguchi.errors import MadoguchiError
    from madoguchi.rules.channel_setup import SETUP

    setup = SETUP[args.kind]
    values = {f.name: getattr(args, f.name) for f in setup.fields if f.cli}
    try:
        channel = check_create_channel(
            None,
            kind=args.kind,
            name=args.name,
            values=values,
            visibility=args.visibility,
            outbound_mps=args.mps,
            check_credentials=not getattr(args, "no_check", False),
        )
    except MadoguchiError as exc:
        hint = ""
        if exc.code == "platform_unreachable" and setup.offline_ok:
            hint = " (use --no-check to save the channel without asking the platform)"
        fail(f"{exc.message}{hint} [{exc.code}]")
    has_webhooks = provider_has_webhooks(args.kind)
    if args.json:
        out: dict[str, Any] = {"id": channel.pk, "kind": channel.kind}
        if has_webhooks:
            out["webhook_path"] = channel.webhook_path
        print(json.dumps(out))
    elif has_webhooks:
        print(f"channel {channel.pk}: webhook URL {settings.PUBLIC_URL}{channel.webhook_path}")
    else:
        print(f"channel {channel.pk}")


def provider_has_webhooks(kind: str) -> bool:
    from madoguchi.providers.registry import provider_class

    return provider_class(kind).capabilities.has_webhooks


def cmd_templates_sync(args: argparse.Namespace) -> None:
    from madoguchi.actions.channels import do_sync_templates
    from madoguchi.models import Channel
    from madoguchi.providers.base import SendError
    from madoguchi.providers.registry import provider_for

    channel = Channel.objects.filter(pk=args.channel).first()
    if channel is None:
        fail(f"no channel {args.channel}")
    try:
        count = do_sync_templates(channel, provider_for(channel).list_templates())
    except SendError as exc:
        fail(f"the platform refused: {exc}")
    print(f"{count} templates")


def cmd_demo(args: argparse.Namespace) -> None:
    from madoguchi.demo import run_demo

    run_demo(host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="madoguchi", description="Madoguchi shared inbox")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the demo: SQLite, simulators, seeded users")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="the ASGI server (HTTP + WebSocket)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="never run a worker in-process")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="background delivery and jobs")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="create or update the database tables")
    migrate.add_argument("-v", "--verbose", action="store_true")
    migrate.set_defaults(func=cmd_migrate)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["agent", "supervisor", "admin", "watcher"])
    add.add_argument("--password")
    add.add_argument("--team", action="append")
    add.set_defaults(func=cmd_user_add)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    create = token.add_parser("create", help="create a token for a user; prints it alone")
    create.add_argument("name", help="the user the token acts as")
    create.add_argument("--label", default="")
    create.set_defaults(func=cmd_token_create)

    channel = sub.add_parser("channel", help="channels").add_subparsers(
        dest="action", required=True
    )
    channel_add = channel.add_parser("add", help="connect a channel").add_subparsers(
        dest="kind", required=True
    )
    for kind in SETUP.values():
        add_channel_parser(channel_add, kind)

    templates = sub.add_parser("templates", help="message templates").add_subparsers(
        dest="action", required=True
    )
    sync = templates.add_parser("sync", help="sync a channel's templates now")
    sync.add_argument("channel", type=int)
    sync.set_defaults(func=cmd_templates_sync)
    return parser


def add_channel_parser(parsers: Any, setup: KindSetup) -> None:
    """One ``channel add <kind>`` command from the kind's set-up fields (SPEC §4 flags)."""
    command = parsers.add_parser(setup.kind, help=f"connect a {setup.label} channel")
    command.add_argument("--name", required=True)
    for spec in setup.fields:
        if not spec.cli:
            continue
        if spec.type == "bool":
            command.add_argument(spec.flag, action="store_true")
        elif spec.type == "choice":
            command.add_argument(spec.flag, choices=spec.choices, default=spec.default)
        else:
            command.add_argument(spec.flag, required=spec.required, default="")
    command.add_argument("--visibility", choices=["all", "team", "assigned_only"], default="all")
    command.add_argument("--mps", type=int, default=80, help="outbound messages per second (cap)")
    if setup.offline_ok:
        command.add_argument(
            "--no-check",
            action="store_true",
            help="save without checking the credentials against the platform (offline set-up)",
        )
    command.add_argument("--json", action="store_true", help="print one JSON object")
    command.set_defaults(func=cmd_channel_add)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        # The demo is self-contained: never seed demo users into a configured production
        # database, never join a production Redis.
        os.environ["DATABASE_URL"] = ""
        os.environ["REDIS_URL"] = ""
    setup_django()
    if args.command not in {"migrate", "demo"}:
        from django.db import connection
        from django.db.migrations.executor import MigrationExecutor

        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            fail("the database is not up to date: run `madoguchi migrate` first")
    args.func(args)


if __name__ == "__main__":
    main()
