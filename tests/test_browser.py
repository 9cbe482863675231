"""The dashboard in a real Chromium (Playwright, Debian's /usr/bin/chromium).

Skipped when Chromium or Playwright is missing, unless ``REQUIRE_BROWSER=1``: then it fails.
Screenshots land in ``artifacts/browser/`` (git-ignored).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ARTIFACTS, CIFAR10_CLASSES

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _require_browser() -> str:
    from dashboard.screenshots import find_chromium

    required = os.environ.get("REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("REQUIRE_BROWSER=1 but the playwright package is not installed")
        pytest.skip("playwright is not installed")
    chromium = find_chromium()
    if chromium is None:
        if required:
            pytest.fail("REQUIRE_BROWSER=1 but Chromium is missing (apt-get install chromium)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return chromium


@contextmanager
def open_page(request) -> Iterator:
    """A Chromium page on the app. The browser check runs first, inside the test, so a
    missing browser fails (REQUIRE_BROWSER=1) or skips before any server is started."""
    chromium = _require_browser()
    app_server = request.getfixturevalue("app_server")
    from playwright.sync_api import sync_playwright

    from dashboard.screenshots import launch_browser

    with sync_playwright() as p:
        browser = launch_browser(p, chromium)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(app_server.url, wait_until="networkidle")
            page.js_errors = errors
            yield page
        finally:
            browser.close()


def test_upload_classify_and_spectra(request, cifar_images):
    with open_page(request) as page:
        _upload_classify_and_spectra(page, cifar_images, request.getfixturevalue("client"))


def _upload_classify_and_spectra(page, cifar_images, client):
    from dashboard.screenshots import open_tab, upload_and_wait, wait_for_plot

    out = ARTIFACTS / "browser"
    out.mkdir(parents=True, exist_ok=True)
    image = next(c for c in cifar_images if c.label == "ship")
    label = upload_and_wait(page, image.path)
    assert label in CIFAR10_CLASSES
    # the browser shows what the API returns for the same image and model
    from gradio_client import handle_file

    assert label == client.predict(handle_file(str(image.path)), api_name="/classify")["label"]
    wait_for_plot(page, "#top5-bar")
    page.screenshot(path=str(out / "classify.png"), full_page=True)

    open_tab(page, "Spectra")
    wait_for_plot(page, "#spectra-plot")
    plot = page.locator("#spectra-plot")
    assert plot.locator("svg.main-svg").count() > 0
    assert plot.locator(".heatmaplayer image, .hm image").count() >= 7  # input + 6 stages (hybrid)
    # 5 crop boxes (stem, layer2-4 DiffStride, head spectral pool) + 4 DiffStride ramp bands
    assert plot.locator(".shapelayer path").count() >= 9
    titles = [t or "" for t in plot.locator(".annotation-text").all_text_contents()]
    assert any("reads this map" in t for t in titles) and any("learned s=(" in t for t in titles)
    page.screenshot(path=str(out / "spectra.png"), full_page=True)
    assert not page.js_errors, page.js_errors


def test_bad_upload_shows_a_message(request, tmp_path: Path, cifar_images):
    with open_page(request) as page:
        _bad_upload_shows_a_message(page, tmp_path, cifar_images)


def _bad_upload_shows_a_message(page, tmp_path: Path, cifar_images):
    from dashboard.screenshots import upload_and_wait

    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\n" * 10)
    page.locator("#input-image input[type=file]").set_input_files(str(bad))
    toast = page.get_by_text("cannot be used as an image")
    toast.first.wait_for(timeout=60_000)
    assert "not an image" in toast.first.inner_text()
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser" / "bad_upload.png"))
    # the page keeps working: a valid upload next is classified
    assert upload_and_wait(page, cifar_images[0].path) in CIFAR10_CLASSES


def test_bundled_example_click_classifies(request):
    """Picking a bundled CIFAR test example fills the input and classifies it."""
    with open_page(request) as page:
        _example_click(page)


def _example_click(page):
    page.get_by_text("airplane #3", exact=True).first.click()
    page.wait_for_function(
        "() => { const el = document.querySelector('#top5-label [data-testid=label-output-value]');"
        " return el && el.textContent.trim().length > 0; }",
        timeout=60_000,
    )
    label = page.locator("#top5-label [data-testid=label-output-value]").first.inner_text().strip()
    assert label in CIFAR10_CLASSES
