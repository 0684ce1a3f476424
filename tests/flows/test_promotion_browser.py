"""A reviewer approves a promotion in the real Prefect UI, in headless Chromium (Debian package, driven by
Playwright; no browser download). The evidence report is in the Resume dialog, the form is filled and
submitted there, and the registry's production stage and the audit log must show that decision."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import audit
from tests.fixtures.promotion_runs import promotion_request, registry_with_production, start_promotion, wait_for_pause

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


def test_reviewer_approves_in_the_prefect_ui(prefect_server, chromium, eve_home, registry_inputs, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    registry = registry_with_production(registry_inputs)
    run = start_promotion(promotion_request(timeout_seconds=180))
    paused = wait_for_pause(run)
    ui_url = prefect_server.removesuffix("/api")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)  # generous: the suite shares two cores
            expect.set_options(timeout=60_000)
            page.goto(f"{ui_url}/runs/flow-run/{paused.id}")
            resume = page.get_by_role("button", name="Resume")
            expect(resume).to_be_visible()
            resume.click()

            dialog = page.locator(".p-modal").filter(has_text="Resume Flow Run")
            expect(dialog.get_by_role("heading", name="Promote eve@v0.2.0 to production?")).to_be_visible()
            expect(dialog.locator("td", has_text="vqa_accuracy")).to_be_visible()
            expect(dialog.get_by_text("a red cube")).to_be_attached()

            # The design-system select opens from the keyboard; a synthetic click closes it again at once.
            decision = dialog.locator(".schema-form-property").filter(has_text="Decision")
            decision.locator("button.p-select-button__control").focus()
            page.keyboard.press("ArrowDown")
            page.get_by_role("option", name="approve").click()
            expect(decision.locator(".p-select-button__value")).to_have_text("approve")
            dialog.locator(".schema-form-property").filter(has_text="Reviewer").locator("textarea").fill("carol")
            dialog.locator(".schema-form-property").filter(has_text="Comment").locator("textarea").fill(
                "Approved in the UI: VQA up"
            )
            dialog.get_by_role("button", name="Submit").click()
            outcome = run.join(timeout_seconds=60)
        finally:
            page.screenshot(path=str(tmp_path / "prefect-ui.png"))
            browser.close()

    assert outcome.status == "approved", outcome
    assert registry.production_version() == "v0.2.0"
    decision = next(r for r in reversed(registry.audit_log.records()) if r.event == audit.REVIEW_DECISION_ACCEPTED)
    assert decision.payload["approval"]["reviewer"] == "carol"
    assert decision.payload["approval"]["comment"] == "Approved in the UI: VQA up"
    assert decision.payload["approval"]["decision"] == "approve"
    assert registry.audit_log.records()[-1].event == audit.PRODUCTION_ASSIGNED
    assert registry.audit_log.verify().ok
