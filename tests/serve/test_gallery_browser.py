"""The web gallery end to end in headless Chromium (Debian's, driven by Playwright), against the real model.

Screenshots go to artifacts/screenshots/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).parents[2] / "artifacts" / "screenshots"
FINAL = ("ok", "repaired", "invalid", "error")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent: apt-get install -y chromium"),
]


@pytest.fixture
def page(browser):  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, name: str) -> Path:  # noqa: ANN001
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def badges(page, grid: str) -> list[str]:  # noqa: ANN001
    return page.eval_on_selector_all(f"{grid} .card", "cards => cards.map(c => c.dataset.status)")


def test_upload_images_and_watch_captions_appear(page, browse_server, photos, tmp_path):  # noqa: ANN001
    page.goto(browse_server.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert "inkscope-2b" in page.inner_text("[data-testid=model-info]")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    page.set_input_files("#file-input", [str(p) for p in photos[:3]] + [str(broken)])
    # Every card shows a pending badge first, then its final status as its answer arrives.
    assert len(page.query_selector_all("#upload-grid .card")) == 4
    page.wait_for_function(
        "() => [...document.querySelectorAll('#upload-grid .card')].every(c => "
        "['ok','repaired','invalid','error'].includes(c.dataset.status))"
    )
    cards = {c.query_selector(".name").inner_text(): c for c in page.query_selector_all("#upload-grid .card")}
    for photo in photos[:3]:
        card = cards[photo.name]
        assert card.get_attribute("data-status") == "ok"
        assert card.query_selector(".caption").inner_text().strip()
        assert card.query_selector(".thumb img").evaluate("img => img.naturalWidth > 0")
    bad = cards["broken.jpg"]
    assert bad.get_attribute("data-status") == "error"
    assert "broken.jpg" in bad.query_selector(".message").inner_text()
    assert page.inner_text("[data-testid=upload-summary]") == "4 of 4 captioned"
    shot(page, "gallery-upload")


def test_drop_an_image_on_the_page(page, browse_server, photos):  # noqa: ANN001
    page.goto(browse_server.url + "/")
    page.wait_for_selector("body[data-ready='1']")
    data = base64.b64encode(photos[4].read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
            return dt;
        }""",
        [photos[4].name, data],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#upload-grid .card[data-status='ok']")
    raw = page.query_selector("#upload-grid .card .raw").text_content()  # inside a closed <details>
    assert raw.strip() and page.query_selector("#upload-grid .card .caption").inner_text().strip() == raw.strip()


def test_browse_filter_search_edit_and_export(page, browse_server, run_dir):  # noqa: ANN001
    page.goto(browse_server.url + "/#browse")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("#browse-grid .card")
    assert len(badges(page, "#browse-grid")) == 8
    assert sorted(set(badges(page, "#browse-grid"))) == ["error", "ok"]
    assert page.query_selector("#browse-grid .card[data-status='ok'] .thumb img").evaluate(
        "img => new Promise(r => img.complete ? r(img.naturalWidth) : img.onload = () => r(img.naturalWidth))"
    )
    shot(page, "browse-all")

    # Filter by status.
    page.click("#status-filter button[data-status='error']")
    page.wait_for_function("() => document.querySelectorAll('#browse-grid .card').length === 2")
    assert set(badges(page, "#browse-grid")) == {"error"}
    shot(page, "browse-errors")
    page.click("#status-filter button[data-status='all']")
    page.wait_for_function("() => document.querySelectorAll('#browse-grid .card').length === 8")

    # Text search.
    page.fill("#search", "truncated")
    page.wait_for_function("() => document.querySelectorAll('#browse-grid .card').length === 1")
    assert page.query_selector("#browse-grid .card .name").inner_text().endswith("truncated.jpg")
    page.fill("#search", "")
    page.wait_for_function("() => document.querySelectorAll('#browse-grid .card').length === 8")

    # Edit a caption and save it; the model's caption stays visible and in the run folder.
    card = page.query_selector("#browse-grid .card[data-status='ok']:not(:has(.badge.edited))")
    record_id = card.get_attribute("data-id")
    model_caption = card.query_selector(".caption").inner_text()
    card.query_selector(".editor textarea").fill("A person edited this caption in the browser.")
    card.query_selector(".save").click()
    page.wait_for_function(
        "id => document.querySelector(`#browse-grid .card[data-id=\"${id}\"] .saved`).textContent === 'saved'",
        arg=record_id,
    )
    assert card.query_selector(".badge.edited") is not None
    assert card.query_selector(".caption").inner_text() == "A person edited this caption in the browser."
    assert model_caption.strip() in card.query_selector(".model-caption").inner_text()
    shot(page, "browse-edited")

    # It persists: a reload shows it, under the "edited" filter too.
    page.reload()
    page.wait_for_selector("#browse-grid .card")
    page.click("#status-filter button[data-status='edited']")
    page.wait_for_function("() => document.querySelectorAll('#browse-grid .card').length >= 1")
    ids = page.eval_on_selector_all("#browse-grid .card", "cards => cards.map(c => c.dataset.id)")
    assert record_id in ids

    # Export downloads the records with the edit applied and the model's caption kept.
    page.click("#status-filter button[data-status='all']")
    page.wait_for_function("() => document.querySelectorAll('#browse-grid .card').length === 8")
    with page.expect_download() as download:
        page.click("[data-testid=export]")
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert len(rows) == 8
    edited = next(r for r in rows if r["id"] == record_id)
    assert edited["caption"] == "A person edited this caption in the browser." and edited["edited"] is True
    assert edited["model_caption"].strip() == model_caption.strip()
    assert (run_dir / "edits.jsonl").exists()


def test_gallery_behind_an_api_key(page, captioner, photos):  # noqa: ANN001
    from serve_helpers import serve

    with serve(captioner, api_key="open-sesame") as locked:
        response = page.goto(locked.url + "/")
        assert response.status == 401 and "API key needed" in page.content()
        page.fill("#k", "wrong")
        page.click("button[type=submit]")
        page.wait_for_selector(".wrong")
        page.fill("#k", "open-sesame")
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready='1']")
        cookies = page.context.cookies()
        session = next(c for c in cookies if c["name"] == "capmill_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict" and "open-sesame" not in session["value"]
        assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read it
        page.set_input_files("#file-input", [str(photos[5])])
        page.wait_for_selector("#upload-grid .card[data-status='ok']")
        shot(page, "gallery-after-key")
