"""Who reads a polled channel (email's IMAP folder) right now.

A channel the platform does not call is read by one receiver thread in one worker process at a
time: two readers would store the same mail twice (or race on the channel's receive state).
Like the job queue, the lease is claimed with a conditional ``UPDATE ... WHERE lease_until <
now OR holder = me``, identical on SQLite and PostgreSQL; the holder renews it while it runs
and another worker takes the channel over once it runs out (a worker killed mid-read).
"""

from __future__ import annotations

from django.db import models

from .channels import Channel


class ReceiverLease(models.Model):
    channel = models.OneToOneField(
        Channel, on_delete=models.CASCADE, primary_key=True, related_name="receiver_lease"
    )
    holder = models.CharField(max_length=128, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
