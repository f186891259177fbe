"""Two people chat in their browsers, each on their own device's `muster ui`.

Usage: chat.py ALICE_LINK BOB_LINK GROUP SCREENSHOT_DIR MUSTER_BIN CAROL_HOME

Drives Debian's Chromium with Playwright: both open the group, alice types, bob's page
shows it without a reload (the delay is printed); text from others is shown as text,
never as markup; the page fits a phone screen. Exits non-zero on any failure.
"""

import subprocess
import sys
import time

from playwright.sync_api import sync_playwright

RECORD_NOTIFICATIONS = """
window.__shown = [];
window.Notification = class {
  static permission = "granted";
  static requestPermission() { return Promise.resolve("granted"); }
  constructor(title, options) { window.__shown.push(title + " | " + (options && options.body)); }
  close() {}
};
"""

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def until(read, done, seconds=20):
    """Polls `read` until `done` holds of its value (the page's CSP forbids the
    string evaluation Playwright's wait_for_function uses); returns the value."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"gave up waiting; last saw {value!r}"
        time.sleep(0.05)


def open_group(page, link, group):
    page.goto(link)
    page.get_by_role("button", name=group).click()
    page.locator("#compose").wait_for(state="visible")


def main():
    alice_link, bob_link, group, shots, muster, carol_home = sys.argv[1:7]
    carol = lambda *args: subprocess.run([muster, "--home", carol_home, *args], capture_output=True, text=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        alice = browser.new_context().new_page()
        bob = browser.new_context(
            viewport={"width": 390, "height": 844}, permissions=["notifications"]
        ).new_page()
        # Record the desktop notifications bob's page shows.
        bob.add_init_script(RECORD_NOTIFICATIONS)
        errors = []
        for page in (alice, bob):
            page.on("pageerror", lambda e: errors.append(str(e)))
        open_group(alice, alice_link, group)
        open_group(bob, bob_link, group)

        started = time.monotonic()
        alice.fill("#text", "hello bob, from the browser")
        alice.press("#text", "Enter")
        bob.locator("#messages").get_by_text("hello bob, from the browser").wait_for(timeout=10_000)
        print(f"alice's message appeared in bob's browser after {(time.monotonic() - started) * 1000:.0f} ms")

        # Reply, react, edit and delete, each seen live in the other browser.
        first = bob.locator("#messages li").filter(has_text="hello bob, from the browser")
        first.get_by_role("button", name="Reply to alice").click()
        bob.fill("#text", "on my way")
        bob.press("#text", "Enter")
        reply = alice.locator("#messages li").filter(has_text="on my way")
        reply.get_by_text("↪ alice: hello bob, from the browser").wait_for(timeout=10_000)
        reply.get_by_role("button", name="React 👍").click()
        bob.locator("#messages li").filter(has_text="on my way").get_by_text("👍 alice").wait_for(timeout=10_000)
        # Any of the other reactions, from the picker; and receipts on alice's own message.
        mine = bob.locator("#messages li").filter(has_text="hello bob, from the browser").first
        mine.get_by_role("button", name="More reactions").click()
        mine.get_by_role("button", name="React ❤️").click()
        greeting = alice.locator("#messages li").filter(has_text="hello bob, from the browser").first
        greeting.get_by_text("❤️ bob").wait_for(timeout=10_000)
        greeting.get_by_role("button", name="read by 1 of 1").click()
        alice.locator(".rollcall").get_by_text("✓✓ bob read it").wait_for(timeout=10_000)
        # A mention of bob stands out on his screen.
        alice.locator("#text").press_sequentially("@bo")
        alice.locator("#mention-suggestions").get_by_text("@bob · bob display").wait_for(timeout=10_000)
        alice.press("#text", "Tab")
        alice.locator("#text").press_sequentially("can you check the gate?")
        assert alice.input_value("#text") == "@bob can you check the gate?", alice.input_value("#text")
        alice.press("#text", "Enter")
        bob.locator("#messages li.mentions-me").filter(has_text="can you check the gate").wait_for(timeout=10_000)
        bob.locator("#messages li").filter(has_text="on my way").get_by_role("button", name="Edit your message").click()
        bob.fill("#text", "on my way, five minutes")
        bob.press("#text", "Enter")
        edited = alice.locator("#messages li").filter(has_text="on my way, five minutes")
        edited.get_by_text("(edited)").wait_for(timeout=10_000)
        bob.locator("#messages li").filter(has_text="on my way, five minutes").get_by_role(
            "button", name="Delete your message").click()
        alice.locator("#messages li").filter(has_text="(deleted)").wait_for(timeout=10_000)
        assert alice.locator("#messages").get_by_text("on my way, five minutes").count() == 0

        # The situation board beside the conversation, with who set each entry.
        alice.fill("#board-key", "location")
        alice.fill("#board-value", "Pier 4")
        alice.press("#board-value", "Enter")
        entry = bob.locator("#board-entries dd").filter(has_text="Pier 4")
        entry.wait_for(timeout=10_000)
        assert "alice" in entry.inner_text()


        # Desktop notifications follow bob's own settings: once he mutes the group, an
        # ordinary message stays quiet, while an alert (below) still notifies.
        shown = lambda: bob.evaluate("window.__shown")
        assert any("hello bob, from the browser" in n for n in shown()), shown()
        bob.get_by_role("button", name="Mute").click()
        bob.get_by_role("button", name="Unmute").wait_for(timeout=10_000)
        bob.locator("nav").get_by_text("muted").wait_for(timeout=10_000)
        alice.fill("#text", "quiet please")
        alice.press("#text", "Enter")
        bob.locator("#messages").get_by_text("quiet please").wait_for(timeout=10_000)
        assert not any("quiet please" in n for n in shown()), shown()

        # An alert: a banner on bob's screen until he acknowledges it; alice's roll-call
        # count follows live.
        alice.check("#as-alert")
        alice.fill("#text", "Evacuate building B")
        alice.press("#text", "Enter")
        banner = bob.locator("#alerts .alert").filter(has_text="Evacuate building B")
        banner.wait_for(timeout=10_000)
        bob.screenshot(path=f"{shots}/alert-phone.png")
        until(lambda: bob.evaluate("window.__shown"),
              lambda shown: any(n.startswith("ALERT in ops · alice") and "Evacuate building B" in n for n in shown))
        alice.locator("#messages").get_by_text("acknowledged by 0 of 1").click()
        alice.locator(".rollcall").get_by_text("bob has not acknowledged yet").wait_for(timeout=10_000)
        started = time.monotonic()
        banner.get_by_role("button", name="Acknowledge").click()
        banner.wait_for(state="detached", timeout=10_000)
        alice.locator("#messages").get_by_text("acknowledged by 1 of 1").wait_for(timeout=10_000)
        alice.locator(".rollcall").get_by_text("✓ bob acknowledged").wait_for(timeout=10_000)
        print(f"bob's acknowledgement reached alice's roll-call after {(time.monotonic() - started) * 1000:.0f} ms")
        alice.screenshot(path=f"{shots}/conversation-desktop.png")
        bob.screenshot(path=f"{shots}/conversation-phone.png")

        # Unread counts: what arrives in a group bob is not looking at shows on it, until
        # he opens it.
        alice.locator("nav").get_by_role("button", name="lunch").click()
        alice.fill("#text", "lunch at noon")
        alice.press("#text", "Enter")
        lunch = bob.locator("nav").get_by_role("button", name="lunch")
        lunch.locator(".badge").filter(has_text="1").wait_for(timeout=10_000)
        lunch.click()
        bob.locator("#messages").get_by_text("lunch at noon").wait_for(timeout=10_000)
        lunch.locator(".badge").wait_for(state="detached", timeout=10_000)
        bob.locator("#messages .day").first.wait_for(timeout=10_000)

        # Search across groups, and the directory of colleagues.
        alice.fill("#search-text", "hello bob")
        alice.press("#search-text", "Enter")
        alice.locator("#listing").get_by_role("button", name="alice: hello bob, from the browser").click()
        alice.locator("#messages").get_by_text("Evacuate building B").wait_for(timeout=10_000)
        alice.get_by_role("button", name="Directory").click()
        alice.locator("#listing li").filter(has_text="@bob").get_by_text("bob display").wait_for(timeout=10_000)

        # My profile: a change goes to an admin; my devices, and a code to link another.
        bob.get_by_role("button", name="Me").click()
        bob.fill("#profile-title", "Site lead")
        bob.get_by_role("button", name="Request this change").click()
        bob.locator("#listing").get_by_text("profile change sent").wait_for(timeout=10_000)
        bob.locator("#listing").get_by_text("(this device)").wait_for(timeout=10_000)
        bob.get_by_role("button", name="Link a new device").click()
        code = bob.locator("#listing .code")
        code.wait_for(timeout=10_000)
        assert code.inner_text().startswith("MUSTER"), code.inner_text()

        # Admin, for admins only: alice invites carol, carol's own device joins with the
        # code, alice approves her after this device checked her proofs, then revokes her.
        assert bob.locator("#show-admin").is_hidden(), "bob is no admin"
        alice.get_by_role("button", name="Admin").click()
        alice.fill("#invite-user", "carol")
        alice.get_by_role("button", name="Create invite").click()
        invite = alice.locator("#listing .code")
        invite.wait_for(timeout=10_000)
        joined = carol("join", invite.inner_text(), "--display-name", "Carol C")
        assert joined.returncode == 0, joined.stderr
        alice.get_by_role("button", name="Admin").click()
        waiting = alice.locator("#listing li").filter(has_text="@carol")
        waiting.get_by_role("button", name="Approve").click()
        alice.locator("#listing").get_by_text("approved carol").wait_for(timeout=10_000)
        synced = carol("sync")
        assert synced.returncode == 0, synced.stderr
        alice.fill("#revoke-user", "carol")
        alice.get_by_role("button", name="Revoke").click()
        alice.get_by_role("button", name="Confirm: revoke carol").click()
        alice.locator("#listing").get_by_text("revoked 1 device(s) of carol").wait_for(timeout=20_000)
        refused = carol("sync")
        assert refused.returncode != 0 and "revoked" in refused.stderr, refused.stderr

        # Text from colleagues is shown as text, never as markup.
        alice.locator("nav").get_by_role("button", name=group).click()
        bob.locator("nav").get_by_role("button", name=group).click()
        hostile = '<img src=x onerror="document.title=\'pwned\'">'
        bob.fill("#text", hostile)
        bob.press("#text", "Enter")
        alice.locator("#messages").get_by_text(hostile).wait_for(timeout=10_000)
        assert alice.locator("#messages img").count() == 0, "markup from a colleague was rendered"
        assert alice.title() != "pwned"
        width = bob.evaluate("document.documentElement.scrollWidth")
        if width > 390:
            wide = bob.evaluate("[...document.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > 390).map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + e.textContent.slice(0, 20) + ' ' + e.parentElement.className + ' ' + Math.round(e.getBoundingClientRect().right)).slice(0, 12)")
            print("too wide:", wide)
        assert width <= 390, f"the phone-sized page scrolls sideways ({width} px)"
        assert not errors, f"script errors: {errors}"
        browser.close()


if __name__ == "__main__":
    main()
