"""The keyboard flow of each mode in a real headless chromium (Debian's; see .ci/run), via Playwright.

Set MUGV_ANNOTATE_SCREENSHOTS=DIR to save a screenshot of each mode (docs/images/ holds them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mugv.annotate.assign import is_swapped

from conftest import build_campaign

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
SHOTS = os.environ.get("MUGV_ANNOTATE_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _open(browser, server, token="token-ann-0000"):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.base}/a/{token}/")
    page.wait_for_selector("body[data-state=ready]", timeout=15000)
    return page, errors


def _watch(page):
    """Voting stays closed until both clips have played to the end once."""
    assert page.get_attribute("body", "data-voting") == "closed"
    assert page.is_disabled("#submit")
    page.keyboard.press("Space")
    page.wait_for_selector("body[data-voting=open]", timeout=15000)


def _times(page):
    return page.evaluate("[...document.querySelectorAll('video')].map(v => v.currentTime)")


def _shot(page, name):
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name))


def test_pairwise_keyboard_flow(tmp_path, live_server, browser):
    campaign = build_campaign(tmp_path, prompts=2, annotators=1, labels_per_item=1, image=True)
    with live_server(campaign) as server:
        page, errors = _open(browser, server)
        page.keyboard.press("1")  # ignored until the clips are watched
        assert page.locator("#aspects button.selected").count() == 0
        _watch(page)
        # synchronised frame stepping: both clips land on the centre of the same frame
        page.keyboard.press("Space")
        page.keyboard.press(".")
        page.keyboard.press(".")
        page.wait_for_function("[...document.querySelectorAll('video')].every(v => !v.seeking && v.paused)")
        t0, t1 = _times(page)
        fps = 8.0
        assert abs(t0 - t1) < 1e-3 and abs((t0 * fps - 0.5) - round(t0 * fps - 0.5)) < 1e-3
        for key, last in ((".", 7.5 / fps), (",", 0.5 / fps)):  # stepping stops at the last and first frames
            for _ in range(10):
                page.keyboard.press(key)
            page.wait_for_function("[...document.querySelectorAll('video')].every(v => !v.seeking && v.paused)")
            assert _times(page) == pytest.approx([last, last], abs=1e-3)
        page.keyboard.press("-")
        assert page.evaluate("[...document.querySelectorAll('video')].map(v => v.playbackRate)") == [0.5, 0.5]
        page.keyboard.press("=")
        page.keyboard.press("?")
        assert page.is_visible("#help")
        page.keyboard.press("Escape")
        assert not page.is_visible("#help")
        first = page.get_attribute("body", "data-item")
        for key in "1234":  # overall left, visual right, motion tie, text both bad
            page.keyboard.press(key)
        assert page.locator("#aspects button.selected").count() == 4
        _shot(page, "annotate-pairwise.png")
        page.keyboard.press("Enter")
        page.wait_for_function(f"document.body.dataset.item !== '{first}' && document.body.dataset.state === 'ready'")
        _watch(page)
        for key in "2222":
            page.keyboard.press(key)
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-state=done]", timeout=15000)
        assert not errors
    answers = {campaign.item_key(campaign.item_by_id[a.item]): a for a in server.store.answers()}
    a = answers[first]
    assert a.screen == {"overall": "left", "visual": "right", "motion": "tie", "text": "both_bad"}
    swapped = is_swapped(campaign, "ann0", a.item)
    assert a.swapped == swapped and a.canonical["overall"] == ("b" if swapped else "a")
    assert a.full_watch and a.plays >= 1 and a.time_ms > 0


def test_grade_keyboard_flow(tmp_path, live_server, browser):
    campaign = build_campaign(tmp_path, mode="grade", prompts=1, models=("m1", "m2"), annotators=1, labels_per_item=1)
    with live_server(campaign) as server:
        page, errors = _open(browser, server)
        assert not page.is_visible("#fig1")
        _watch(page)
        page.keyboard.press("f")
        page.keyboard.press("3")  # third defect tag
        page.keyboard.press("1")
        page.keyboard.press("1")  # toggled twice: off again
        _shot(page, "annotate-grade.png")
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-voting=closed][data-state=ready]", timeout=15000)
        _watch(page)
        page.keyboard.press("h")
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-state=done]", timeout=15000)
        assert not errors
    grades = sorted((a.grade, tuple(a.tags)) for a in server.store.answers())
    assert grades == [("fail", (campaign.spec.defect_tags[2],)), ("high_quality", ())]


def test_sidebyside_reveals_models_only_after_the_vote_and_undo(tmp_path, live_server, browser):
    campaign = build_campaign(tmp_path, mode="sidebyside", prompts=2, annotators=1, labels_per_item=1,
                              aspects=["overall", "motion"])
    with live_server(campaign) as server:
        page, errors = _open(browser, server)
        assert "m1" not in page.content() and "m2" not in page.content()
        _watch(page)
        page.keyboard.press("3")
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-state=revealed]", timeout=15000)
        reveal = page.text_content("#reveal")
        assert "m1" in reveal and "m2" in reveal
        _shot(page, "annotate-sidebyside.png")
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-state=ready]", timeout=15000)
        assert len(server.store.answers()) == 1
        page.keyboard.press("u")  # undo: the answer is withdrawn and its item comes back
        page.wait_for_function("document.getElementById('status').textContent.includes('taken back')")
        assert server.store.answers() == []
        assert not errors
