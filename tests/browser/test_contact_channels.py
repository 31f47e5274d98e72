"""One contact on two numbers in Chromium: each message shows its channel, the composer offers
the contact's channels (the one the customer used last first) and a reply goes out on the one
chosen; a supervisor merges the contacts from the conversation header. Desktop and phone,
English and Japanese. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from madoguchi.models import Contact, Conversation
from tests.browser.test_console import LIVE
from tests.helpers import PHONE_NUMBER_ID, wait_for
from tests.test_contacts import OTHER_PHONE, SECOND_NUMBER_ID, second  # noqa: F401 - fixture

pytestmark = pytest.mark.browser

CUSTOMER = "819012345678"


def test_a_merged_contact_is_answered_on_the_channel_chosen(agent, sim, second, users):  # noqa: F811
    from madoguchi.actions.conversations import check_assign

    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "Where is order 48213?")
    first = wait_for(lambda: Conversation.objects.filter(identity__handle=CUSTOMER).first())
    first = check_assign(users["sora"], first, users["aiko"])
    sim.simulator.customer_sends(SECOND_NUMBER_ID, OTHER_PHONE, "Yuki T.", "Osaka shop open?")
    wait_for(lambda: Conversation.objects.filter(identity__handle=OTHER_PHONE).first())

    # The supervisor merges the second phone's contact from the conversation header.
    sora = agent("sora")
    sora.page.on("dialog", lambda dialog: dialog.accept())
    sora.open_conversation(first.pk)
    sora.page.locator(".merge-menu summary").click()
    sora.page.fill(".merge-menu input[name=merge_q]", "Yuki T.")
    candidate = sora.page.locator(".merge-results li", has_text=OTHER_PHONE)
    expect(candidate).to_be_visible(timeout=LIVE)
    sora.screenshot("desktop-en-merge-contacts")
    candidate.locator("button[type=submit]").click()
    timeline = sora.page.locator("#timeline")
    expect(timeline).to_contain_text("Osaka shop open?", timeout=LIVE)
    assert Contact.objects.count() == 1

    # Aiko sees both numbers in one thread, each message labelled with its channel.
    aiko = agent("aiko")
    aiko.open_conversation(first.pk)
    msg = aiko.page.locator(".msg", has_text="Osaka shop open?")
    expect(msg.locator(".via")).to_have_text("Shop Osaka")
    expect(aiko.page.locator(".msg", has_text="order 48213").locator(".via")).to_have_text(
        "Shop WhatsApp"
    )
    # The composer offers both, the number the customer wrote from last first.
    chooser = aiko.page.locator("[data-via-chooser] select")
    expect(chooser.locator("option")).to_have_count(2)
    expect(chooser.locator("option:checked")).to_contain_text("Shop Osaka")
    aiko.screenshot("desktop-en-reply-channel-chooser")
    aiko.page.fill(".pane[data-pane=reply] textarea", "Yes, until 19:00.")
    aiko.page.locator(".pane[data-pane=reply] button[type=submit]").click()
    sent = aiko.page.locator(".msg.out", has_text="Yes, until 19:00.")
    expect(sent.locator(".via")).to_have_text("Shop Osaka", timeout=LIVE)
    wait_for(lambda: sim.simulator.sent_to(SECOND_NUMBER_ID, OTHER_PHONE))
    assert sim.simulator.sent_to(PHONE_NUMBER_ID, CUSTOMER) == []

    # Switching the channel keeps what was typed; the reply goes out on the first number.
    aiko.page.fill(".pane[data-pane=reply] textarea", "Your order ships today.")
    chooser.select_option(label=chooser.locator("option", has_text="Shop WhatsApp").inner_text())
    expect(aiko.page.locator("#composer")).to_have_attribute(
        "data-channel", str(first.channel_id), timeout=LIVE
    )
    expect(aiko.page.locator(".pane[data-pane=reply] textarea")).to_have_value(
        "Your order ships today."
    )
    aiko.page.locator(".pane[data-pane=reply] button[type=submit]").click()
    wait_for(lambda: sim.simulator.sent_to(PHONE_NUMBER_ID, CUSTOMER))

    # A phone, in Japanese.
    phone = agent("aiko", locale="ja-JP", viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.page.goto(f"/c/{first.pk}")  # the phone's thread screen hides the top bar
    expect(phone.page.locator("[data-via-chooser]")).to_be_visible()
    expect(phone.page.locator(".msg", has_text="Osaka shop open?").locator(".via")).to_be_visible()
    phone.screenshot("phone-ja-reply-channel-chooser")
