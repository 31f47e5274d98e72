"""Permission-checked search over contacts and messages (the console's search page).

Message text is found through an index, so the cost follows the number of matches, not the
number of messages (migration 0005_message_search):

- PostgreSQL: ``text ILIKE '%...%'``, served by the GIN trigram index ``msg_text_trgm``.
- SQLite: the FTS5 table ``madoguchi_message_fts`` (trigram tokenizer), queried with the text
  as one quoted phrase, so FTS syntax in it (``"``, ``*``, ``NEAR``, ``OR``, ``:``, ``^``) is
  only text.

Both match substrings in any script (Japanese included), ignoring case, but need 3 characters
to use their trigrams. A 2-character query therefore reads only the latest ``SHORT_WINDOW``
messages (newest first, stopping at the page size): bounded cost, recent results. One character
is too broad to be a search; it finds nothing.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Lookup, Max, Q, QuerySet, Value
from django.db.models.expressions import F, RawSQL

from madoguchi.models import Conversation, Message, User
from madoguchi.queries.conversations import conversations_for
from madoguchi.rules.access import readable_conversations_q

MIN_LENGTH = 2
INDEXED_LENGTH = 3  # a trigram
MAX_LENGTH = 200  # longer text is cut: whatever contains it contains its first 200 characters
SHORT_WINDOW = 100_000  # the latest messages read for a query too short for the index


def escape_like(text: str) -> str:
    """``text`` as a LIKE pattern matching itself (backslash is the escape character)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def fts_phrase(text: str) -> str:
    """``text`` as one FTS5 string: a phrase, whatever operators or quotes it contains."""
    return '"' + text.replace('"', '""') + '"'


class ContainsText(Lookup):
    """``lhs`` contains the string ``rhs``, ignoring case: ``ILIKE`` on PostgreSQL (which the
    trigram index serves; Django's ``icontains`` compares ``UPPER()`` and would not use it),
    ``LIKE`` on SQLite (case folds ASCII only)."""

    lookup_name = "contains_text"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        operator = "ILIKE" if connection.vendor == "postgresql" else "LIKE"
        return f"{lhs} {operator} {rhs} ESCAPE '\\'", [*lhs_params, *rhs_params]


def clean_query(text: str) -> str:
    """What is searched for: trimmed, NUL removed (neither database takes it), at most
    MAX_LENGTH characters."""
    return text.replace("\x00", "").strip()[:MAX_LENGTH].strip()


def search(user: User, text: str, *, limit: int = 30) -> tuple[list[Conversation], list[Message]]:
    """Conversations whose contact matches ``text`` (name or handle), and messages containing
    it (private notes by people included, system notes not), both only where ``user`` may read
    (rules.access), most recent first, at most ``limit`` of each. Never raises on any text."""
    text = clean_query(text)
    if len(text) < MIN_LENGTH:
        return [], []
    return search_contacts(user, text, limit), search_messages(user, text, limit)


def search_contacts(user: User, text: str, limit: int) -> list[Conversation]:
    return list(
        conversations_for(user)
        .filter(Q(contact__name__icontains=text) | Q(identity__handle__contains=text))
        .order_by("-last_message_at", "-id")[:limit]
    )


def search_messages(user: User, text: str, limit: int) -> list[Message]:
    messages = Message.objects.exclude(kind="note", author__isnull=True)
    readable = readable_conversations_q(user)
    if readable:  # an empty Q: every conversation is readable
        messages = messages.filter(
            conversation__in=Conversation.objects.filter(readable).values("pk")
        )
    messages = matching(messages, text)
    return list(
        messages.select_related(
            "conversation__contact", "conversation__channel", "author"
        ).order_by("-id")[:limit]
    )


def matching(messages: QuerySet[Message], text: str) -> QuerySet[Message]:
    """``messages`` narrowed to those whose text contains ``text`` (see the module docstring)."""
    from django.db import connection

    if len(text) < INDEXED_LENGTH:
        newest = Message.objects.aggregate(newest=Max("id"))["newest"] or 0
        return messages.filter(
            ContainsText(F("text"), Value(f"%{escape_like(text)}%")),
            id__gt=newest - SHORT_WINDOW,
        )
    if connection.vendor == "sqlite":
        return messages.filter(
            id__in=RawSQL(
                "SELECT rowid FROM madoguchi_message_fts WHERE madoguchi_message_fts MATCH %s",
                (fts_phrase(text),),
            )
        )
    return messages.filter(ContainsText(F("text"), Value(f"%{escape_like(text)}%")))
