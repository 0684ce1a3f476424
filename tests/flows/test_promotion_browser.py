"""Two people log in to the platform's real Prefect server in headless Chromium (Debian package, driven
by Playwright; no browser download), through Prefect's own login prompt (``name:password``). The
requester's own approval is refused with the reason shown in the Resume dialog; the reviewer's approval
moves production; the audit log names the authenticated reviewer. An unauthenticated API request gets
401."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import audit
from tests.fixtures.promotion_runs import (
    promotion_request,
    registry_with_production,
    start_promotion,
    use_policy,
    wait_for_pause,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The system Chromium, installed from Debian if missing (never a downloaded browser build)."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.skip("no /usr/bin/chromium and no apt-get to install it")
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=True,
            capture_output=True,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    return CHROMIUM


def _log_in(page, ui_url: str, auth: str) -> None:
    """Prefect's own login page: one field that takes ``name:password``."""
    from playwright.sync_api import expect

    page.goto(f"{ui_url}/login")
    field = page.get_by_placeholder("admin:pass")
    expect(field).to_be_visible()
    field.fill(auth)
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_placeholder("admin:pass")).to_have_count(0)


def _decide_in_ui(page, ui_url: str, flow_run_id, comment: str) -> None:
    """Open the paused run, read the evidence, approve with ``comment``, submit."""
    from playwright.sync_api import expect

    page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}")
    resume = page.get_by_role("button", name="Resume")
    expect(resume).to_be_visible()
    resume.click()
    dialog = page.locator(".p-modal").filter(has_text="Resume Flow Run")
    expect(dialog.get_by_role("heading", name="Promote eve@v0.2.0 to production?")).to_be_visible()
    expect(dialog.locator("td", has_text="vqa_accuracy")).to_be_visible()
    expect(dialog.get_by_text("a red cube")).to_be_attached()
    expect(dialog.locator(".schema-form-property").filter(has_text="Reviewer")).to_have_count(0)  # no typed names

    # The design-system select opens from the keyboard; a synthetic click closes it again at once.
    decision = dialog.locator(".schema-form-property").filter(has_text="Decision")
    decision.locator("button.p-select-button__control").focus()
    page.keyboard.press("ArrowDown")
    page.get_by_role("option", name="approve").click()
    expect(decision.locator(".p-select-button__value")).to_have_text("approve")
    dialog.locator(".schema-form-property").filter(has_text="Comment").locator("textarea").fill(comment)
    dialog.get_by_role("button", name="Submit").click()
    expect(dialog).to_have_count(0)


def test_two_people_log_in_the_requester_is_refused_and_the_reviewer_moves_production(
    prefect_server, prefect_accounts, chromium, eve_home, registry_inputs, tmp_path
):
    import httpx
    from playwright.sync_api import expect, sync_playwright

    use_policy(reviewers=("alice", "carol"), timeout_seconds=300)
    registry = registry_with_production(registry_inputs)
    alice, carol = prefect_accounts.auth("alice"), prefect_accounts.auth("carol")
    run = start_promotion(promotion_request(), requested_as=alice)
    paused = wait_for_pause(run)
    ui_url = prefect_server.removesuffix("/api")
    assert httpx.get(f"{prefect_server}/flow_runs/{paused.id}", timeout=30).status_code == 401

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        pages = []
        try:
            expect.set_options(timeout=60_000)  # generous: the suite shares two cores
            for _ in range(2):  # one browser profile per person: separate logins
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(60_000)
                pages.append(page)
            as_alice, as_carol = pages

            _log_in(as_alice, ui_url, alice)
            _decide_in_ui(as_alice, ui_url, paused.id, "my own model, looks fine")
            paused = wait_for_pause(run, after_pause_key=paused.state.state_details.pause_key)
            as_alice.reload()
            as_alice.get_by_role("button", name="Resume").click()
            dialog = as_alice.locator(".p-modal").filter(has_text="Resume Flow Run")
            expect(dialog.get_by_text("requested this promotion and cannot review it")).to_be_visible()
            assert registry.production_version() == "v0.1.0"

            _log_in(as_carol, ui_url, carol)
            _decide_in_ui(as_carol, ui_url, paused.id, "Approved in the UI: VQA up")
            outcome = run.join(timeout_seconds=90)
        finally:
            for index, page in enumerate(pages):
                page.screenshot(path=str(tmp_path / f"prefect-ui-{index}.png"))
            browser.close()

    assert outcome.status == "approved", outcome
    assert registry.production_version() == "v0.2.0"
    records = registry.audit_log.records()
    refused = next(r for r in records if r.event == audit.REVIEW_DECISION_REFUSED)
    assert refused.actor == "alice" and refused.payload["submission"]["account"] == "alice"
    decision = next(r for r in reversed(records) if r.event == audit.REVIEW_DECISION_ACCEPTED)
    assert decision.actor == "carol"
    assert decision.payload["decision"]["submission"]["account"] == "carol"
    assert decision.payload["approval"]["reviewer"] == "carol"
    assert decision.payload["approval"]["comment"] == "Approved in the UI: VQA up"
    assert decision.payload["approval"]["requested_by"] == "alice"
    assert records[-1].event == audit.PRODUCTION_ASSIGNED and records[-1].actor == "carol"
    from tasks.verification import verify_platform

    report = verify_platform()
    assert report.ok, report.problems
