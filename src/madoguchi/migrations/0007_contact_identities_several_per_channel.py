"""A contact may hold several handles on one channel (two e-mail addresses, an old and a new
phone number once two contacts are merged): the (contact, channel) uniqueness goes. A handle
still belongs to one contact per channel (``identity_unique_handle``)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("madoguchi", "0006_channel_options_subscription"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="contactidentity",
            name="identity_one_per_channel",
        ),
    ]
