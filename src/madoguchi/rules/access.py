"""Who may read and who may act on a conversation (SPEC §2.1, §2.2). One place, no exceptions.

Reading follows the channel's visibility; sending belongs to the assignee alone.
"""

from __future__ import annotations

from django.db.models import Q
from django.utils.translation import gettext as _

from madoguchi.errors import Forbidden
from madoguchi.models import Channel, Conversation, User, Visibility


def readable_conversations_q(user: User) -> Q:
    """A filter on Conversation selecting exactly what ``user`` may read.

    Channels are few: they are resolved first, so the filter on conversations is on their own
    columns (no join), and with every channel fully readable there is no filter at all; the
    inbox indexes then serve the query directly."""
    if not user.is_active:
        return Q(pk__in=[])
    if user.is_supervisor_or_admin:
        return Q()
    channels = list(Channel.objects.values_list("id", "visibility", "team_id"))
    if all(visibility == Visibility.ALL for _, visibility, _ in channels):
        return Q()  # the common case, without asking for the user's teams (one query less)
    team_ids = set(user.teams.values_list("id", flat=True))
    full, by_team = [], []
    for channel_id, visibility, team_id in channels:
        if visibility == Visibility.ALL or (visibility == Visibility.TEAM and team_id in team_ids):
            full.append(channel_id)
        elif visibility == Visibility.TEAM:
            by_team.append(channel_id)
    if len(full) == len(channels):
        return Q()
    readable = Q(channel_id__in=full) | Q(assignee_id=user.pk)
    if by_team and team_ids:
        readable |= Q(channel_id__in=by_team, team_id__in=team_ids)
    return readable


def check_can_use_channel(user: User, channel: Channel) -> None:
    """Starting conversations or listing templates on a channel: what the user could read."""
    if user.is_supervisor_or_admin or channel.visibility != Visibility.TEAM:
        return  # on an assigned_only channel, what an agent starts is theirs to read
    if channel.team_id is not None and user.teams.filter(pk=channel.team_id).exists():
        return
    raise Forbidden(_("You do not have access to this channel."), code="forbidden")


def check_can_send(user: User, conversation: Conversation) -> None:
    """Only the assignee sends (SPEC §2.1). Raises Forbidden(``not_assignee``)."""
    if conversation.assignee_id is None:
        raise Forbidden(
            _("This conversation is unassigned: claim it or have it assigned before replying."),
            code="not_assignee",
            assignee=None,
        )
    if conversation.assignee_id != user.pk:
        owner = conversation.assignee
        raise Forbidden(
            _("Only the assignee (%(name)s) can reply.") % {"name": owner.label if owner else "?"},
            code="not_assignee",
            assignee=owner.pk if owner else None,
        )


def check_can_write_note(user: User, conversation: Conversation) -> None:
    """Any staff member who can read may add a private note; watchers are read-only."""
    if user.is_watcher:
        raise Forbidden(_("Watchers have read-only access."), code="read_only")


def check_can_claim(user: User, conversation: Conversation) -> None:
    if user.is_watcher:
        raise Forbidden(_("Watchers have read-only access."), code="read_only")
    if conversation.assignee_id is not None and conversation.assignee_id != user.pk:
        raise Forbidden(
            _("This conversation already has an assignee; ask a supervisor to reassign it."),
            code="already_assigned",
        )


def check_can_assign(user: User, conversation: Conversation, new_assignee: User | None) -> None:
    """Supervisors and admins reassign anything; an assignee may transfer their own."""
    if user.is_supervisor_or_admin:
        return
    if user.is_watcher:
        raise Forbidden(_("Watchers have read-only access."), code="read_only")
    if conversation.assignee_id == user.pk and new_assignee is not None:
        return  # a transfer to a colleague
    raise Forbidden(
        _("Only the assignee may transfer this conversation; supervisors may reassign it."),
        code="forbidden",
    )


def check_can_change_status(user: User, conversation: Conversation) -> None:
    if user.is_supervisor_or_admin or conversation.assignee_id == user.pk:
        return
    if conversation.assignee_id is None and not user.is_watcher:
        return
    raise Forbidden(_("Only the assignee or a supervisor can do this."), code="forbidden")


def check_is_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden(_("Only administrators can do this."), code="forbidden")


def check_assignable(user: User) -> None:
    """Conversations go only to active people who can reply."""
    if not user.is_active or user.is_watcher:
        raise Forbidden(
            _("Conversations can only be assigned to active staff who can reply."),
            code="invalid_assignee",
        )


def recipients_for(conversation: Conversation) -> list[int]:
    """Ids of every active user allowed to read ``conversation``: the audience of its events."""
    channel: Channel = conversation.channel
    users = User.objects.filter(is_active=True)
    if channel.visibility == Visibility.ALL:
        return list(users.values_list("id", flat=True))
    allowed = Q(role__in=["admin", "supervisor"])
    if conversation.assignee_id:
        allowed |= Q(pk=conversation.assignee_id)
    if channel.visibility == Visibility.TEAM:
        team_ids = [t for t in (channel.team_id, conversation.team_id) if t]
        if team_ids:
            allowed |= Q(teams__id__in=team_ids)
    return sorted(set(users.filter(allowed).values_list("id", flat=True)))


AudienceKey = tuple[int, int | None, int | None]


def audience_key(conversation: Conversation) -> AudienceKey:
    """What decides a conversation's audience besides its channel's settings: (channel, team,
    assignee). Conversations with the same key have the same recipients_for."""
    return (conversation.channel_id, conversation.team_id, conversation.assignee_id)


def recipients_for_many(conversations: list[Conversation]) -> dict[AudienceKey, list[int]]:
    """recipients_for of every conversation, by audience_key, sorted: the same sets, in at most
    one query whatever the number of conversations and channels (the active users concerned,
    with their teams). Each conversation's ``channel`` must be loaded."""
    channels = {c.channel_id: c.channel for c in conversations}
    keys = {audience_key(c) for c in conversations}
    if not keys:
        return {}
    visibility = {pk: channel.visibility for pk, channel in channels.items()}
    team_ids: set[int] = set()
    for channel_id, team_id, _assignee in keys:
        if visibility[channel_id] == Visibility.TEAM:
            team_ids.update(t for t in (channels[channel_id].team_id, team_id) if t)
    users = User.objects.filter(is_active=True)
    if all(visibility[channel_id] != Visibility.ALL for channel_id, _t, _a in keys):
        wanted = Q(role__in=["admin", "supervisor"]) | Q(
            pk__in=[assignee for _c, _t, assignee in keys if assignee]
        )
        if team_ids:
            wanted |= Q(teams__id__in=team_ids)
        users = users.filter(wanted)
    # One row per (user, team), (user, None) for a user in no team: the users concerned and
    # their memberships in one query.
    roles: dict[int, str] = {}
    members: dict[int, set[int]] = {}
    for user_id, role, team_id in users.values_list("id", "role", "teams__id"):
        roles[user_id] = role
        if team_id in team_ids:
            members.setdefault(team_id, set()).add(user_id)
    everyone = sorted(roles)
    privileged = {pk for pk, role in roles.items() if role in ("admin", "supervisor")}
    audiences: dict[AudienceKey, list[int]] = {}
    for key in keys:
        channel_id, team_id, assignee_id = key
        if visibility[channel_id] == Visibility.ALL:
            audiences[key] = everyone
            continue
        allowed = set(privileged)
        if assignee_id and assignee_id in roles:
            allowed.add(assignee_id)
        if visibility[channel_id] == Visibility.TEAM:
            for team in (channels[channel_id].team_id, team_id):
                if team:
                    allowed |= members.get(team, set())
        audiences[key] = sorted(allowed)
    return audiences
