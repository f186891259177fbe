"""A newcomer sets up her device in the browser, is let in live, and files travel.

Usage: newcomer.py ALICE_LINK CAROL_LINK GROUP SCREENSHOT_DIR MUSTER_BIN ALICE_HOME FILE
                   CAROL_SECOND_DEVICE_LINK

Carol's `muster ui` runs on a fresh home: she joins with the invite alice made in her
admin screen and waits; alice approves her there, and carol's page moves from "waiting"
to her conversations on its own. Alice sends FILE to the group from her browser
(progress shown) and carol downloads it: the bytes must be the same. Then alice revokes
carol, and carol's page says so. Exits non-zero on any failure.
"""

import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from chat import CHROMIUM_FLAGS


PROVISIONING = """
[[users]]
handle = "dana"
display_name = "Dana Diaz"
department = "Security"

[[groups]]
name = "night-shift"
members = ["dana"]
managed = true
"""


def main():
    alice_link, carol_link, group, shots, muster, alice_home, file, second_link = sys.argv[1:9]
    alice_cli = lambda *args: subprocess.run([muster, "--home", alice_home, *args], capture_output=True, text=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        alice = browser.new_context().new_page()
        carol = browser.new_context(viewport={"width": 390, "height": 844}, accept_downloads=True).new_page()
        errors = []
        for page in (alice, carol):
            page.on("pageerror", lambda e: errors.append(str(e)))

        # Carol's device has no identity yet: the page offers to join.
        carol.goto(carol_link)
        carol.get_by_role("heading", name="Set up this device").wait_for(timeout=10_000)
        carol.screenshot(path=f"{shots}/enrol-phone.png")
        alice.goto(alice_link)
        alice.get_by_role("button", name="Admin").click()
        alice.fill("#invite-user", "carol")
        alice.get_by_role("button", name="Create invite").click()
        invite = alice.locator("#listing .code")
        invite.wait_for(timeout=10_000)
        carol.fill("#join-code", invite.inner_text())
        carol.fill("#join-name", "Carol Cruz")
        carol.fill("#join-department", "Facilities")
        carol.get_by_role("button", name="Send my request").click()
        carol.get_by_role("heading", name="Waiting for approval").wait_for(timeout=10_000)
        carol.screenshot(path=f"{shots}/waiting-phone.png")

        # Alice sees the requested profile, checked by her device, and approves it; carol's
        # page moves on by itself.
        alice.get_by_role("button", name="Admin").click()
        waiting = alice.locator("#listing li").filter(has_text="@carol")
        waiting.get_by_text("Carol Cruz").wait_for(timeout=10_000)
        waiting.get_by_text("Facilities").wait_for(timeout=10_000)
        alice.screenshot(path=f"{shots}/admin-desktop.png")
        started = time.monotonic()
        waiting.get_by_role("button", name="Approve").click()
        carol.locator("#main").wait_for(state="visible", timeout=20_000)
        print(f"carol's page left 'waiting' {(time.monotonic() - started) * 1000:.0f} ms after alice approved")
        assert carol.locator("#enrol").is_hidden()
        # With the profile she asked for, as the directory shows it.
        alice.get_by_role("button", name="Directory").click()
        alice.locator("#listing li").filter(has_text="@carol").get_by_text("Facilities").wait_for(timeout=10_000)

        # Added to the group (by alice's CLI on the same home as her UI), carol sees it live.
        added = alice_cli("group", "add", group, "carol")
        assert added.returncode == 0, added.stderr
        carol.locator("nav").get_by_role("button", name=group).click(timeout=20_000)
        carol.locator("#compose").wait_for(state="visible")

        # A file from alice's browser, with progress, downloaded by carol: the same bytes.
        alice.locator("nav").get_by_role("button", name=group).click()
        alice.locator("#compose").wait_for(state="visible")
        alice.set_input_files("#file", file)
        name = Path(file).name
        alice.locator("#upload-text").get_by_text("Sent " + name).wait_for(timeout=30_000)
        row = carol.locator("#messages li").filter(has_text=name)
        row.wait_for(timeout=20_000)
        with carol.expect_download(timeout=30_000) as download:
            row.get_by_role("button", name="Download " + name).click()
        saved = Path(shots) / ("downloaded-" + name)
        download.value.save_as(saved)
        assert saved.read_bytes() == Path(file).read_bytes(), "the downloaded file differs"
        saved.unlink()
        print(f"carol downloaded {name} ({Path(file).stat().st_size} bytes), the same bytes alice sent")

        # A file dropped on the conversation travels the same way.
        dropped = alice.evaluate_handle(
            "() => { const d = new DataTransfer();"
            " d.items.add(new File(['notes from the site walk'], 'site-notes.txt', { type: 'text/plain' }));"
            " return d; }")
        alice.dispatch_event("#conversation", "dragover", {"dataTransfer": dropped})
        alice.dispatch_event("#conversation", "drop", {"dataTransfer": dropped})
        alice.locator("#upload-text").get_by_text("Sent site-notes.txt").wait_for(timeout=30_000)
        row = carol.locator("#messages li").filter(has_text="site-notes.txt")
        with carol.expect_download(timeout=30_000) as download:
            row.get_by_role("button", name="Download site-notes.txt").click(timeout=20_000)
        notes = Path(shots) / "downloaded-site-notes.txt"
        download.value.save_as(notes)
        assert notes.read_text() == "notes from the site walk", notes.read_text()
        notes.unlink()

        # Carol asks for a new title; alice approves it in her admin screen.
        carol.get_by_role("button", name="Me").click()
        carol.fill("#profile-title", "Duty officer")
        carol.get_by_role("button", name="Request this change").click()
        carol.locator("#listing").get_by_text("profile change sent").wait_for(timeout=10_000)
        alice.get_by_role("button", name="Admin").click()
        change = alice.locator("#listing li").filter(has_text="@carol").filter(has_text="Duty officer")
        change.get_by_role("button", name="Approve profile").click()
        alice.locator("#listing").get_by_text("approved the new profile of carol").wait_for(timeout=10_000)
        alice.get_by_role("button", name="Directory").click()
        alice.locator("#listing li").filter(has_text="@carol").get_by_text("Duty officer").wait_for(timeout=10_000)

        # A tab picked last stays shown, even when the answer for one picked before it
        # comes later (the People tab's list is held back here until then).
        alice.get_by_role("button", name="Admin").click()
        alice.get_by_role("tab", name="People").wait_for(timeout=10_000)
        held = []
        alice.route("**/api/admin/pending", lambda route: held.append(route))
        alice.get_by_role("tab", name="People").click()
        alice.get_by_role("tab", name="Provisioning").click()
        alice.locator("#provision-text").wait_for(timeout=10_000)
        assert held, "the People tab asked for its list"
        with alice.expect_response("**/api/admin/pending"):
            for route in held:
                route.continue_()
        alice.unroute("**/api/admin/pending")
        # Once the page has nothing left to do (the late answer handled), the tab picked
        # last is still the one shown, its form still there.
        alice.evaluate("() => new Promise((done) => requestIdleCallback(() => setTimeout(done, 0)))")
        picked = alice.get_by_role("tab", name="Provisioning")
        assert picked.get_attribute("aria-selected") == "true", "a late People tab replaced Provisioning"
        assert alice.locator("#provision-text").count() == 1, "the provisioning form is gone"

        # Provisioning from a file: the plan first, then applied with progress; the invite
        # code it made is shown.
        alice.fill("#provision-text", PROVISIONING)
        alice.get_by_role("button", name="Show the plan").click()
        alice.locator(".plan").get_by_text("invite dana").wait_for(timeout=10_000)
        alice.locator(".plan").get_by_text("create managed group night-shift").wait_for(timeout=10_000)
        alice.get_by_role("button", name="Apply this plan").click()
        alice.locator("#provision-outcome").get_by_text("applied: 2 of 2 step(s) done").wait_for(timeout=30_000)
        code = alice.locator(".plan .code")
        assert code.inner_text().startswith("MUSTER"), code.inner_text()
        alice.screenshot(path=f"{shots}/provisioning-desktop.png")

        # The groups tab shows it managed; alice adds carol to it there.
        alice.get_by_role("tab", name="Groups").click()
        night = alice.locator("#listing li[data-group]").filter(has_text="night-shift").filter(has_text="managed")
        night.wait_for(timeout=10_000)
        night.locator("input").fill("carol")
        night.get_by_role("button", name="Add to night-shift").click()
        alice.locator("#listing").get_by_text("added carol to night-shift").wait_for(timeout=20_000)
        carol.locator("nav").get_by_role("button", name="night-shift").wait_for(timeout=20_000)

        # The organisation policy: a revoked device now erases its store.
        alice.get_by_role("tab", name="Policy").click()
        alice.get_by_label("A revoked device erases its store").check()
        alice.get_by_label("People may approve their own new devices").check()
        alice.get_by_role("button", name="Sign and publish").click()
        alice.locator("#listing").get_by_text("published version").wait_for(timeout=10_000)

        # Carol adds a second device in its own browser with a link code from her first,
        # and approves it there herself; an admin device issues its certificate.
        carol.get_by_role("button", name="Me").click()
        carol.get_by_role("button", name="Link a new device").click()
        link_code = carol.locator("#listing .code")
        link_code.wait_for(timeout=10_000)
        second = browser.new_context().new_page()
        second.on("pageerror", lambda e: errors.append(str(e)))
        second.goto(second_link)
        second.fill("#link-code", link_code.inner_text())
        second.get_by_role("button", name="Link this device").click()
        second.get_by_role("heading", name="Waiting for approval").wait_for(timeout=10_000)
        new_device = second.locator("#enrol .device").inner_text()
        carol.fill("#approve-device", new_device)
        carol.get_by_role("button", name="Approve my device").click()
        carol.locator("#listing").get_by_text("approved your new device").wait_for(timeout=10_000)
        second.locator("#main").wait_for(state="visible", timeout=30_000)
        second.locator("nav").get_by_role("button", name=group).wait_for(timeout=30_000)
        print("carol's second device, approved by carol herself, is in")

        # Revoked, carol's page says so.
        alice.get_by_role("button", name="Admin").click()
        alice.fill("#revoke-user", "carol")
        alice.get_by_role("button", name="Revoke").click()
        alice.get_by_role("button", name="Confirm: revoke carol").click()
        alice.locator("#listing").get_by_text("revoked 2 device(s) of carol").wait_for(timeout=20_000)
        for page in (carol, second):
            page.get_by_role("heading", name="This device was revoked").wait_for(timeout=20_000)
        carol.get_by_text("were erased from this device").wait_for(timeout=10_000)
        shown = carol.locator("body").inner_text()
        assert "site-plan" not in shown and "night-shift" not in shown, f"the revoked page still shows: {shown}"

        # The audit log has it, and nothing anyone said.
        alice.get_by_role("button", name="Admin").click()
        alice.get_by_role("tab", name="Audit log").click()
        alice.locator("#listing li").filter(has_text="carol").first.wait_for(timeout=10_000)
        assert alice.locator("#listing").get_by_text("site-plan").count() == 0
        assert not errors, f"script errors: {errors}"
        browser.close()


if __name__ == "__main__":
    main()
