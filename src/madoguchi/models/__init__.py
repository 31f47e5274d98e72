"""Madoguchi's models, one module per aggregate."""

from .audit import AuditEvent
from .channels import Channel, Template, Visibility
from .contacts import Contact, ContactIdentity
from .conversations import Conversation, ConversationStatus
from .jobs import Job, RawEvent, Throttle
from .messages import STATUS_RANK, Direction, Message
from .receivers import ReceiverLease
from .replies import CannedReply
from .users import ApiToken, Role, Team, User

__all__ = [
    "STATUS_RANK",
    "ApiToken",
    "AuditEvent",
    "CannedReply",
    "Channel",
    "Contact",
    "ContactIdentity",
    "Conversation",
    "ConversationStatus",
    "Direction",
    "Job",
    "Message",
    "RawEvent",
    "ReceiverLease",
    "Role",
    "Team",
    "Template",
    "Throttle",
    "User",
    "Visibility",
]
