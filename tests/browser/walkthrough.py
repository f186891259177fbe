"""The README walkthrough's steps in the browser, as it says them.

Usage: walkthrough.py ALICE_LINK BOB_LINK RELAY_ADDRESS FINGERPRINT TOKEN

Alice creates the organisation on her fresh device, invites bob; bob joins from his
fresh device and waits; alice approves him and bob's page moves on by itself; alice
creates the group ops with bob, both open it, and alice's briefing shows on bob's screen
and is marked read by him. Exits non-zero on any failure.
"""

import sys

from playwright.sync_api import sync_playwright

from chat import CHROMIUM_FLAGS


def main():
    alice_link, bob_link, relay, fingerprint, token = sys.argv[1:6]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        alice = browser.new_context().new_page()
        bob = browser.new_context().new_page()
        errors = []
        for page in (alice, bob):
            page.on("pageerror", lambda e: errors.append(str(e)))

        # 2. Open Muster in your browser; create the organisation.
        alice.goto(alice_link)
        alice.get_by_role("heading", name="Set up this device").wait_for(timeout=10_000)
        alice.get_by_label("Relay address").fill(relay)
        alice.get_by_label("Certificate fingerprint").fill(fingerprint)
        alice.get_by_label("Bootstrap token").fill(token)
        alice.get_by_label("Organisation name").fill("Acme")
        alice.get_by_label("Your handle").fill("alice")
        alice.get_by_role("button", name="Create the organisation").click()
        alice.locator("#main").wait_for(state="visible", timeout=20_000)
        alice.get_by_text("alice · Acme").wait_for(timeout=10_000)

        # 3. Invite a colleague.
        alice.get_by_role("button", name="Admin").click()
        alice.get_by_label("Invite a colleague").fill("bob")
        alice.get_by_role("button", name="Create invite").click()
        code = alice.locator("#listing .code")
        code.wait_for(timeout=10_000)

        # 4. Bob joins from his browser.
        bob.goto(bob_link)
        bob.get_by_label("Invite code").fill(code.inner_text())
        bob.get_by_label("Your name as colleagues will see it").fill("Bob B")
        bob.get_by_label("Title").fill("Engineer")
        bob.get_by_label("Department").fill("Ops")
        bob.get_by_role("button", name="Send my request").click()
        bob.get_by_role("heading", name="Waiting for approval").wait_for(timeout=10_000)

        # 5. Alice approves; bob's page moves on by itself.
        alice.get_by_role("button", name="Admin").click()
        waiting = alice.locator("#listing li").filter(has_text="@bob")
        waiting.get_by_text("Bob B").wait_for(timeout=10_000)
        waiting.get_by_role("button", name="Approve").click()
        bob.locator("#main").wait_for(state="visible", timeout=20_000)

        # 6. Make a group and talk.
        alice.get_by_role("button", name="Admin").click()
        alice.get_by_role("tab", name="Groups").click()
        alice.get_by_label("Name", exact=True).fill("ops")
        alice.get_by_label("Members").fill("bob")
        alice.get_by_role("button", name="Create group").click()
        for page in (alice, bob):
            page.locator("nav").get_by_role("button", name="ops").click(timeout=20_000)
            page.locator("#compose").wait_for(state="visible")
        alice.fill("#text", "Briefing at 10:00")
        alice.press("#text", "Enter")
        bob.locator("#messages").get_by_text("Briefing at 10:00").wait_for(timeout=10_000)
        alice.locator("#messages li").filter(has_text="Briefing at 10:00").get_by_text("read by 1 of 1").wait_for(timeout=10_000)
        print("the walkthrough's browser steps work as written")
        assert not errors, f"script errors: {errors}"
        browser.close()


if __name__ == "__main__":
    main()
