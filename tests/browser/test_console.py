"""The console in Chromium: two agents, live updates, the composer's rules, templates, phone
layout, Japanese, customer HTML shown as text. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from madoguchi.models import Conversation
from tests.helpers import WABA_ID, wait_for

pytestmark = pytest.mark.browser

CUSTOMER = "819012345678"
LIVE = 8000  # ms: generous upper bound for "appears live" (the bench measures the real latency)


def conversation_of(wa_id: str = CUSTOMER) -> Conversation:
    return wait_for(lambda: Conversation.objects.filter(identity__handle=wa_id).first())


def test_a_customer_message_appears_live_for_two_agents(agent, sim):
    aiko, ben = agent("aiko"), agent("ben")
    aiko.open_inbox("all")
    ben.open_inbox("all")
    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "注文した商品がまだ届きません")
    for person in (aiko, ben):
        row = person.page.locator("#conversation-list .row", has_text="Yuki Tanaka")
        expect(row).to_contain_text("注文した商品がまだ届きません", timeout=LIVE)
    conversation = conversation_of()
    aiko.open_conversation(conversation.pk)
    ben.open_conversation(conversation.pk)
    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "注文番号は 48213 です")
    for person in (aiko, ben):
        expect(person.page.locator("#timeline")).to_contain_text(
            "注文番号は 48213 です", timeout=LIVE
        )
    aiko.screenshot("desktop-en-thread-unassigned")


def test_a_claim_is_seen_live_and_only_the_assignee_can_reply(agent, sim):
    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "Hello, is anyone there?")
    conversation = conversation_of()
    aiko, ben = agent("aiko"), agent("ben")
    aiko.open_conversation(conversation.pk)
    ben.open_conversation(conversation.pk)
    expect(ben.page.locator("[data-notice=not-assignee]")).to_contain_text("Claim it to reply")

    aiko.page.locator("#composer button", has_text="Claim").click()
    expect(aiko.page.locator("#composer textarea[name=text]").first).to_be_visible(timeout=LIVE)
    # Ben's screen follows without a reload: he now sees who owns it, and cannot reply.
    expect(ben.page.locator("[data-notice=not-assignee]")).to_contain_text("aiko", timeout=LIVE)
    expect(ben.page.locator(".pane[data-pane=reply]")).to_have_count(0)
    expect(ben.page.locator("#composer button", has_text="Claim")).to_have_count(0)
    ben.screenshot("desktop-en-not-assignee")

    aiko.page.fill(".pane[data-pane=reply] textarea", "Yes! How can I help you today?")
    aiko.page.locator(".pane[data-pane=reply] button[type=submit]").click()
    for person in (aiko, ben):
        expect(person.page.locator("#timeline")).to_contain_text(
            "How can I help you today?", timeout=LIVE
        )
    wait_for(lambda: sim.sent_to(CUSTOMER))
    assert sim.sent_to(CUSTOMER)[0].body["text"]["body"] == "Yes! How can I help you today?"
    # the ticks follow the platform's statuses
    expect(aiko.page.locator(".msg.out .tick.read")).to_have_count(1, timeout=LIVE)
    aiko.screenshot("desktop-en-thread-assignee")


def test_a_closed_window_offers_the_template_picker_and_sends_the_values(agent, sim, users):
    from madoguchi.actions.channels import do_sync_templates
    from madoguchi.actions.conversations import check_claim
    from madoguchi.providers.registry import provider_for

    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "Any news?", timestamp=time.time() - 30 * 3600)
    do_sync_templates(sim.channel, provider_for(sim.channel).list_templates())
    conversation = check_claim(users["aiko"], conversation_of())
    aiko = agent("aiko")
    aiko.open_conversation(conversation.pk)
    composer = aiko.page.locator("#composer")
    expect(composer).to_contain_text("window closed")
    expect(composer.locator(".pane[data-pane=reply]")).to_have_count(0)  # no free text
    composer.locator("[data-template-select]").select_option(label="order_update · en_US · utility")
    form = composer.locator(".template-form:visible")
    send = form.locator("button[type=submit]")
    expect(send).to_be_disabled()  # nothing is sent until every value is valid
    form.locator("input[data-key='1']").fill("Yuki")
    form.locator("input[data-key='2']").fill("#48213")
    expect(form.locator(".pv-body")).to_contain_text("Hi Yuki, your order #48213 has been updated")
    aiko.screenshot("desktop-en-template-picker")
    send.click()
    wait_for(lambda: sim.sent_to(CUSTOMER))
    body = sim.sent_to(CUSTOMER)[0].body
    assert body["type"] == "template"
    assert body["template"]["name"] == "order_update"
    assert [p["text"] for p in body["template"]["components"][0]["parameters"]] == [
        "Yuki",
        "#48213",
    ]
    expect(aiko.page.locator("#timeline")).to_contain_text(
        "Hi Yuki, your order #48213", timeout=LIVE
    )
    assert WABA_ID  # the template came from this account's registry


def test_the_japanese_console_speaks_japanese(agent, sim):
    sim.customer_sends(CUSTOMER, "佐藤 花子", "こんにちは")
    conversation = conversation_of()
    aiko = agent("aiko", locale="ja-JP", viewport={"width": 1440, "height": 900})
    aiko.open_inbox("all")
    expect(aiko.page.locator(".tabs")).to_contain_text("自分の担当")
    expect(aiko.page.locator(".tabs")).to_contain_text("未割り当て")
    aiko.screenshot("desktop-ja-inbox")
    aiko.open_conversation(conversation.pk)
    expect(aiko.page.locator("#composer")).to_contain_text("担当する")
    aiko.screenshot("desktop-ja-thread")


@pytest.mark.parametrize("locale,tag", [("en-US", "en"), ("ja-JP", "ja")])
def test_the_phone_layout_goes_from_list_to_thread_and_back(agent, sim, locale, tag):
    from madoguchi.models import Channel

    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "Can I change my delivery address?")
    conversation_of()
    Channel.objects.update(name="Tokyo Flagship Store WhatsApp")  # a name that fills the row
    ben = agent(
        "ben", locale=locale, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    ben.open_inbox("all")
    page = ben.page
    expect(page.locator("#list-pane")).to_be_visible()
    expect(page.locator("#thread-pane")).to_be_hidden()
    # a row's channel, owner and window stay on one line (a wrapped line began with its "·")
    meta = page.locator("#conversation-list .row-meta").first
    expect(meta.locator(".window")).to_be_visible()
    lines = meta.evaluate(
        "(m) => new Set([...m.children].map((s) => Math.round(s.getBoundingClientRect().top))).size"
    )
    assert lines == 1
    ben.screenshot(f"phone-{tag}-list")
    page.locator("#conversation-list .row a").first.tap()
    expect(page.locator("#thread-pane")).to_be_visible(timeout=LIVE)
    expect(page.locator("#list-pane")).to_be_hidden()
    expect(page.locator("#timeline")).to_contain_text("delivery address")
    ben.screenshot(f"phone-{tag}-thread")
    page.locator("[data-action=back]").tap()
    expect(page.locator("#list-pane")).to_be_visible()
    expect(page.locator("#thread-pane")).to_be_hidden()


def test_customer_html_is_shown_as_text(agent, sim):
    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2"><b>bold</b>'
    sim.customer_sends(CUSTOMER, "<i>Mallory</i>", hostile)
    conversation = conversation_of()
    aiko = agent("aiko")
    aiko.open_inbox("all")
    expect(aiko.page.locator("#conversation-list .row").first).to_contain_text("<script>")
    aiko.open_conversation(conversation.pk)
    expect(aiko.page.locator("#timeline .msg.in .text")).to_have_text(hostile)
    expect(aiko.page.locator(".thread-head h1")).to_have_text("<i>Mallory</i>")
    sim.customer_sends(CUSTOMER, "<i>Mallory</i>", "<script>window.__pwned = 3</script>live")
    expect(aiko.page.locator("#timeline")).to_contain_text(
        "<script>window.__pwned = 3</script>live", timeout=LIVE
    )
    assert aiko.page.evaluate("window.__pwned") is None


@pytest.fixture
def aikos_conversation(sim, users):
    from madoguchi.actions.conversations import check_claim

    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "Hi, a question about my order")
    return check_claim(users["aiko"], conversation_of())


def test_canned_replies_attachments_and_notes(agent, sim, aikos_conversation):
    from madoguchi.models import CannedReply
    from madoguchi.simulators.whatsapp import tiny_png

    CannedReply.objects.create(shortcut="order", text="Could you send me your order number?")
    aiko = agent("aiko")
    aiko.open_conversation(aikos_conversation.pk)
    page = aiko.page
    reply = page.locator(".pane[data-pane=reply] textarea")
    reply.click()
    reply.type("/ord")
    expect(page.locator(".canned-list")).to_contain_text("/order")
    reply.press("Enter")
    expect(reply).to_have_value("Could you send me your order number?")
    reply.press("Control+Enter")
    expect(page.locator("#timeline")).to_contain_text(
        "Could you send me your order number?", timeout=LIVE
    )

    page.set_input_files(
        "input[type=file][data-attach]",
        files=[{"name": "label.png", "mimeType": "image/png", "buffer": tiny_png()}],
    )
    expect(page.locator("#timeline .msg.out img.media")).to_have_count(1, timeout=LIVE)
    wait_for(lambda: any(s.body["type"] == "image" for s in sim.sent_to(CUSTOMER)))

    page.locator("[data-tab=note]").click()
    page.fill(".pane[data-pane=note] textarea", "VIP customer, be quick")
    page.locator(".pane[data-pane=note] button[type=submit]").click()
    expect(page.locator("#timeline .msg.kind-note")).to_contain_text(
        "VIP customer, be quick", timeout=LIVE
    )
    assert all("VIP" not in str(s.body) for s in sim.sent_to(CUSTOMER))  # notes never leave


def test_a_new_conversation_starts_with_a_template(agent, sim):
    from madoguchi.actions.channels import do_sync_templates
    from madoguchi.providers.registry import provider_for

    do_sync_templates(sim.channel, provider_for(sim.channel).list_templates())
    ben = agent("ben")
    page = ben.page
    page.goto("/new/")
    page.fill("[data-to]", "+44 7911 123456")
    page.locator("[data-template-select]").select_option(label="order_update · en_US · utility")
    form = page.locator(".template-form:visible")
    form.locator("input[data-key='1']").fill("Sam")
    form.locator("input[data-key='2']").fill("#77")
    ben.screenshot("desktop-en-new-conversation")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/c/*")
    expect(page.locator(".thread-head")).to_contain_text("+447911123456")
    wait_for(lambda: sim.sent_to("447911123456"))
    assert sim.sent_to("447911123456")[0].body["template"]["name"] == "order_update"


def test_the_page_catches_up_after_the_connection_drops(agent, sim):
    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "first message")
    aiko = agent("aiko")
    aiko.open_inbox("all")
    expect(aiko.page.locator("#conversation-list")).to_contain_text("first message")
    aiko.context.set_offline(True)  # new connections fail until we are back online
    aiko.page.evaluate("window.madoguchiLive.drop()")
    expect(aiko.page.locator("#live-state.off")).to_have_count(1, timeout=LIVE)
    sim.customer_sends("4915112345678", "Lena Becker", "written while you were away")
    aiko.context.set_offline(False)
    expect(aiko.page.locator("#live-state.on")).to_have_count(1, timeout=15000)
    expect(aiko.page.locator("#conversation-list")).to_contain_text(
        "written while you were away", timeout=LIVE
    )


def test_keyboard_shortcuts_move_through_the_list(agent, sim):
    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "one")
    sim.customer_sends("4915112345678", "Lena Becker", "two")
    aiko = agent("aiko")
    aiko.open_inbox("all")
    page = aiko.page
    page.keyboard.press("j")
    expect(page.locator("#thread h1")).to_have_count(1, timeout=LIVE)
    first = page.locator("#thread h1").inner_text()
    page.keyboard.press("j")
    expect(page.locator("#thread h1")).not_to_have_text(first, timeout=LIVE)
    page.keyboard.press("?")
    expect(page.locator("#shortcuts")).to_be_visible()


def test_a_new_message_in_my_conversation_notifies_me(agent, sim, aikos_conversation):
    aiko = agent("aiko")
    aiko.context.grant_permissions(["notifications"])
    aiko.page.add_init_script(
        "window.__notes = []; window.Notification = class { constructor(title, options) {"
        " window.__notes.push([title, options.body]); } static get permission() { return 'granted'; }"
        " static requestPermission() { return Promise.resolve('granted'); } };"
    )
    aiko.open_inbox("mine")
    sim.customer_sends(CUSTOMER, "Yuki Tanaka", "Are you still there?")
    aiko.page.wait_for_function("window.__notes.length > 0", timeout=LIVE)
    assert aiko.page.evaluate("window.__notes")[0][1] == "Are you still there?"


def test_the_console_installs_as_an_app(agent, sim):
    aiko = agent("aiko")
    aiko.open_inbox("all")
    scope = aiko.page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
    assert scope.endswith("/")
    manifest = aiko.page.evaluate(
        "fetch(document.querySelector('link[rel=manifest]').href).then(r => r.json())"
    )
    assert manifest["display"] == "standalone"
