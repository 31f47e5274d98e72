"""Permission-checked search over contacts and messages (the console's search page).

Message text is found through an index, so the cost follows the number of matches, not the
number of messages (migration 0005_message_search):

- PostgreSQL: ``text ILIKE '%...%'``, served by the GIN trigram index ``msg_text_trgm``.
- SQLite: the FTS5 table ``madoguchi_message_fts`` (trigram tokenizer), queried with the text
  as one quoted phrase, so FTS syntax in it (``"``, ``*``, ``NEAR``, ``OR``, ``:``, ``^``) is
  only text.

Both match substrings in any script (Japanese included), ignoring case, but need 3 characters
to use their trigrams. A 2-character query therefore reads only the latest ``SHORT_WINDOW``
messages and the ``SHORT_CONVERSATIONS`` most recently active conversations' contacts (newest
first, stopping at the page size): bounded cost, recent results. One character is too broad to
be a search; it finds nothing.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Lookup, Max, Q, QuerySet, Value
from django.db.models.expressions import F

from madoguchi.models import Contact, ContactIdentity, Conversation, Message, User
from madoguchi.queries.conversations import conversations_for
from madoguchi.rules.access import readable_conversations_q

MIN_LENGTH = 2
INDEXED_LENGTH = 3  # a trigram
CONTACT_CANDIDATES = 300  # beyond this many matching contacts, a text is broad
MAX_LENGTH = 200  # longer text is cut: whatever contains it contains its first 200 characters
SHORT_WINDOW = 20_000  # the latest messages read for a query too short for the index
SHORT_CONVERSATIONS = 2_000  # the most recently active conversations read for such a query


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
    """The readable conversations of contacts whose name or handle contains ``text``."""
    pattern = Value(f"%{escape_like(text)}%")
    walk = Q(ContainsText(F("contact__name"), pattern)) | Q(
        ContainsText(F("identity__handle"), pattern)
    )
    if len(text) < INDEXED_LENGTH:
        # No trigram to look up: the most recently active conversations only (bounded cost).
        recent = Conversation.objects.order_by("-last_message_at", "-id").values("pk")
        matches = walk & Q(pk__in=recent[:SHORT_CONVERSATIONS])
        return list(
            conversations_for(user).filter(matches).order_by("-last_message_at", "-id")[:limit]
        )
    by_name = Contact.objects.filter(ContainsText(F("name"), pattern))
    by_handle = ContactIdentity.objects.filter(ContainsText(F("handle"), pattern))
    contact_ids = list(by_name.values_list("id", flat=True)[: CONTACT_CANDIDATES + 1])
    identity_ids = list(by_handle.values_list("id", flat=True)[: CONTACT_CANDIDATES + 1])
    if len(contact_ids) > CONTACT_CANDIDATES or len(identity_ids) > CONTACT_CANDIDATES:
        # A broad text: walk the inbox order and stop at a page (matches are many, so a page
        # comes soon). Collecting every match first would cost a scan of all contacts.
        matches = walk
    else:
        # A narrow one: those few contacts' conversations, through their own indexes.
        matches = Q(contact_id__in=contact_ids) | Q(identity_id__in=identity_ids)
    return list(conversations_for(user).filter(matches).order_by("-last_message_at", "-id")[:limit])


def search_messages(user: User, text: str, limit: int) -> list[Message]:
    messages = Message.objects.exclude(kind="note", author__isnull=True)
    readable = readable_conversations_q(user)
    if readable:  # an empty Q: every conversation is readable
        messages = messages.filter(
            conversation__in=Conversation.objects.filter(readable).values("pk")
        )
    messages = newest_containing(messages, text)
    return list(
        messages.select_related("conversation__contact", "conversation__channel", "author")[:limit]
    )


def newest_containing(messages: QuerySet[Message], text: str) -> QuerySet[Message]:
    """``messages`` narrowed to those whose text contains ``text``, newest first (see the module
    docstring)."""
    from django.db import connection

    if len(text) < INDEXED_LENGTH:
        newest = Message.objects.aggregate(newest=Max("id"))["newest"] or 0
        return messages.filter(
            ContainsText(F("text"), Value(f"%{escape_like(text)}%")),
            id__gt=newest - SHORT_WINDOW,
        ).order_by("-id")
    if connection.vendor == "sqlite":
        # A join ordered by the FTS rowid: SQLite reads the matches newest first and stops at
        # the page size. (``id IN (SELECT rowid ... MATCH)`` would first collect every match:
        # 0.4 s for a word in every message at 1M messages, against 1 ms.)
        return messages.extra(
            tables=["madoguchi_message_fts"],
            where=[
                "madoguchi_message_fts.rowid = madoguchi_message.id",
                "madoguchi_message_fts MATCH %s",
            ],
            params=[fts_phrase(text)],
            select={"fts_rowid": "madoguchi_message_fts.rowid"},
            order_by=["-fts_rowid"],
        )
    return messages.filter(ContainsText(F("text"), Value(f"%{escape_like(text)}%"))).order_by("-id")
