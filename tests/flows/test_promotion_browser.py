"""Two people log in to the platform's real Prefect server in headless Chromium (Debian package, driven
by Playwright; no browser download), through Prefect's own login prompt (``name:password``). The
requester's own approval is refused with the reason shown in the Resume dialog; the reviewer's approval
moves production; the audit log names the authenticated reviewer. An unauthenticated API request gets
401."""

from __future__ import annotations

import pytest

from tasks import audit
from tests.fixtures.browser import browser_pages, decide_in_form, log_in, open_review_form
from tests.fixtures.promotion_runs import (
    promotion_request,
    registry_with_production,
    start_promotion,
    use_policy,
    wait_for_pause,
)

pytestmark = pytest.mark.slow


def _decide_in_ui(page, ui_url: str, flow_run_id, comment: str) -> None:
    """Open the paused run, read the evidence, approve with ``comment``, submit."""
    from playwright.sync_api import expect

    dialog = open_review_form(page, ui_url, flow_run_id)
    expect(dialog.get_by_role("heading", name="Promote eve@v0.2.0 to production?")).to_be_visible()
    expect(dialog.locator("li", has_text="vqa_accuracy").first).to_be_visible()
    expect(dialog.get_by_text("a red cube")).to_be_attached()
    expect(dialog.locator(".schema-form-property").filter(has_text="Reviewer")).to_have_count(0)  # no typed names
    decide_in_form(page, dialog, "approve", comment)


def test_two_people_log_in_the_requester_is_refused_and_the_reviewer_moves_production(
    prefect_server, prefect_accounts, chromium, eve_home, registry_inputs, tmp_path
):
    import httpx
    from playwright.sync_api import expect

    use_policy(reviewers=("alice", "carol"), timeout_seconds=300)
    registry = registry_with_production(registry_inputs)
    alice, carol = prefect_accounts.auth("alice"), prefect_accounts.auth("carol")
    run = start_promotion(promotion_request(), requested_as=alice)
    paused = wait_for_pause(run)
    ui_url = prefect_server.removesuffix("/api")
    assert httpx.get(f"{prefect_server}/flow_runs/{paused.id}", timeout=30).status_code == 401

    with browser_pages(chromium, count=2) as pages:  # one browser profile per person: separate logins
        try:
            as_alice, as_carol = pages

            log_in(as_alice, ui_url, alice)
            _decide_in_ui(as_alice, ui_url, paused.id, "my own model, looks fine")
            paused = wait_for_pause(run, after_pause_key=paused.state.state_details.pause_key)
            dialog = open_review_form(as_alice, ui_url, paused.id)
            expect(dialog.get_by_text("requested this promotion and cannot review it")).to_be_visible()
            assert registry.production_version() == "v0.1.0"

            log_in(as_carol, ui_url, carol)
            _decide_in_ui(as_carol, ui_url, paused.id, "Approved in the UI: VQA up")
            outcome = run.join(timeout_seconds=90)
        finally:
            for index, page in enumerate(pages):
                page.screenshot(path=str(tmp_path / f"prefect-ui-{index}.png"))

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
