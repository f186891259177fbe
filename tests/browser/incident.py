"""Incident command in the browser: alice opens a drill incident, sends an alert with its
own answers and assigns bob a task; bob answers with a button and accepts and finishes the
task; alice sees the roll-call by answer, closes the incident and saves its report.

Usage: incident.py ALICE_LINK BOB_LINK GROUP SCREENSHOT_DIR REPORT_FILE

Drives Debian's Chromium with Playwright. Exits non-zero on any failure.
"""

import sys
import time

from playwright.sync_api import sync_playwright

from chat import CHROMIUM_FLAGS, open_group, until


def main():
    alice_link, bob_link, group, shots, report_file = sys.argv[1:6]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        alice = browser.new_context(accept_downloads=True).new_page()
        bob = browser.new_context().new_page()
        errors = []
        for page in (alice, bob):
            page.on("pageerror", lambda e: errors.append(str(e)))
        open_group(alice, alice_link, group)
        open_group(bob, bob_link, group)

        # A drill incident, opened from the board.
        alice.fill("#incident-title", "Levee drill")
        alice.check("#incident-drill")
        alice.click("#incident-form button[type=submit]")
        alice.locator("#incident-now").get_by_text("Levee drill").wait_for(timeout=10_000)

        # An alert with its own answers, marked as a drill.
        alice.check("#as-alert")
        alice.fill("#alert-options", "safe,need help!")
        alice.check("#alert-drill")
        alice.fill("#text", "LEVEE-UI check in")
        alice.press("#text", "Enter")

        alert = bob.locator("#messages li").filter(has_text="LEVEE-UI check in")
        alert.wait_for(timeout=15_000)
        assert alert.locator(".drill-tag").count() == 1, "the alert shows as a drill"
        alert.get_by_role("button", name="Answer safe").click()
        # Bob's own answer is marked as his.
        until(
            lambda: bob.locator("#messages li").filter(has_text="LEVEE-UI check in")
            .get_by_role("button", name="Answer safe").get_attribute("aria-pressed"),
            lambda pressed: pressed == "true",
        )

        # A task for bob, from the board.
        alice.fill("#task-title", "Sandbags to gate 2")
        alice.fill("#task-assignee", "bob")
        alice.click("#task-form button[type=submit]")
        task = bob.locator("#task-list li").filter(has_text="Sandbags to gate 2")
        task.wait_for(timeout=15_000)
        task.get_by_role("button", name="Accept Sandbags to gate 2").click()
        until(lambda: task.inner_text(), lambda t: "accepted" in t)
        task.get_by_role("button", name="Done Sandbags to gate 2").click()
        theirs = alice.locator("#task-list li").filter(has_text="Sandbags to gate 2")
        until(lambda: theirs.inner_text(), lambda t: "done" in t)

        # Alice's roll-call, grouped by answer.
        sent = alice.locator("#messages li").filter(has_text="LEVEE-UI check in")
        until(lambda: sent.locator("button.acks").inner_text(), lambda t: t.startswith("acknowledged by 1"))
        sent.locator("button.acks").click()
        roll = alice.locator("#messages li").filter(has_text="LEVEE-UI check in").locator(".rollcall")
        until(lambda: roll.inner_text() if roll.count() else "", lambda t: "safe: 1 — bob" in t)
        alice.screenshot(path=f"{shots}/incident-alice.png", full_page=True)
        bob.screenshot(path=f"{shots}/incident-bob.png", full_page=True)

        alice.get_by_role("button", name="Close incident").click()
        until(lambda: alice.locator("#incident-now").inner_text(), lambda t: "closed" in t)
        with alice.expect_download() as download:
            alice.get_by_role("button", name="Report (Markdown)").click()
        download.value.save_as(report_file)
        assert not errors, errors
    print("incident command worked in both browsers")


if __name__ == "__main__":
    main()
