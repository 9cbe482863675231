"""Screenshots of every dashboard tab with a real Chromium (Playwright), for the docs.

    python -m dashboard.screenshots --url http://127.0.0.1:7860/ --out docs/screenshots \
        [--image dashboard/examples/0001_ship.png] [--model hybrid] [--chromium /usr/bin/chromium] [--phone]

Uploads one image, waits for the prediction, then captures the Classify, Spectra (with
feature maps), Compare and Training tabs as ``<tab>.png`` (1440x900), and with ``--phone``
also as ``phone_<tab>.png`` (390x844). The browser tests share its helpers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from serving.files import atomic_write_bytes
from serving.paths import REPO_ROOT

if TYPE_CHECKING:  # playwright is a test tool, imported where a browser starts
    from playwright.sync_api import Browser, Playwright

__all__ = ["CHROMIUM_ARGS", "find_chromium", "launch_browser", "upload_and_wait", "open_tab", "capture_all"]

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]


def find_chromium() -> str | None:
    """``$CHROMIUM`` if set (and only that), else Debian's /usr/bin/chromium or one on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"] if Path(os.environ["CHROMIUM"]).is_file() else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def launch_browser(playwright: Playwright, executable: str | None = None) -> Browser:
    executable = executable or find_chromium()
    if executable is None:
        raise FileNotFoundError("Chromium not found (install it: apt-get install chromium)")
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


def upload_and_wait(page, image: str | Path, timeout_ms: int = 60_000) -> str:
    """Upload ``image`` into the input panel; returns the predicted label once it shows."""
    page.locator("#input-image input[type=file]").set_input_files(str(image))
    label = page.locator("#top5-label [data-testid=label-output-value]").first
    page.wait_for_function(
        "() => { const el = document.querySelector('#top5-label [data-testid=label-output-value]'); return el && el.textContent.trim().length > 0; }",
        timeout=timeout_ms,
    )
    return label.inner_text().strip()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)  # the tab's content mounts


def wait_for_plot(page, selector: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        "(sel) => { const root = document.querySelector(sel); return root && root.querySelector('.main-svg'); }",
        arg=selector, timeout=timeout_ms,
    )


PHONE = (390, 844)


def choose_model(page, name: str) -> None:
    """Pick ``name`` in the Classify tab's model dropdown (typed, then chosen from the list)."""
    box = page.locator("#model-select input")
    box.click()
    box.fill(name)
    page.get_by_role("option", name=name).first.click()
    page.wait_for_function("(n) => document.querySelector('#model-select input').value.startsWith(n)", arg=name)


def capture_all(url: str, out: Path, image: Path, executable: str | None = None, width: int = 1440,
                height: int = 900, prefix: str = "", model: str | None = None) -> dict[str, Path]:
    """Screenshots of the five tabs at ``width`` x ``height`` as ``<prefix><tab>.png``
    (``model``: the model to show instead of the default)."""
    from playwright.sync_api import sync_playwright  # optional: playwright is a dev/test tool

    out.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}

    def shot(page, name: str) -> None:
        page.wait_for_timeout(800)
        shots[prefix + name] = atomic_write_bytes(out / f"{prefix}{name}.png", page.screenshot(full_page=True))

    with sync_playwright() as p:
        browser = launch_browser(p, executable)
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        page.set_default_timeout(120_000)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#input-image input[type=file]", state="attached")
        if model:
            choose_model(page, model)
        upload_and_wait(page, image)
        wait_for_plot(page, "#top5-bar")
        page.wait_for_function("() => document.querySelector('#classify-summary')?.innerText.includes('Prediction')")
        shot(page, "classify")

        open_tab(page, "Spectra")
        wait_for_plot(page, "#spectra-plot")
        page.get_by_text("Spatial feature maps").click()
        page.locator("#show-features input[type=checkbox]").check()
        page.wait_for_function(
            "() => document.querySelectorAll('#feature-plot .main-svg .heatmaplayer image, #feature-plot .hm').length > 0",
        )
        shot(page, "spectra")

        open_tab(page, "Compare")  # opening the tab compares the default models on the image
        page.wait_for_function("() => document.querySelector('#compare-label-1 meter')")
        wait_for_plot(page, "#compare-strides")
        shot(page, "compare")

        open_tab(page, "Training")
        wait_for_plot(page, "#training-curves")
        shot(page, "training")

        open_tab(page, "Robustness")  # opening the tab probes the image on screen
        wait_for_plot(page, "#robustness-shift")
        wait_for_plot(page, "#probe-plot")
        page.locator("#probe-strip").scroll_into_view_if_needed()  # the strip loads lazily, once in view
        page.locator("#probe-strip img").wait_for()
        shot(page, "robustness")
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    parser.add_argument("--image", type=Path, default=REPO_ROOT / "dashboard" / "examples" / "0001_ship.png")
    parser.add_argument("--model", default=None, help="model to show (default: the dashboard's default)")
    parser.add_argument("--chromium", default=None)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--phone", action="store_true",
                        help=f"also capture phone_<tab>.png at {PHONE[0]}x{PHONE[1]}")
    args = parser.parse_args(argv)
    if not args.image.is_file():
        parser.error(f"--image {args.image}: no such file")
    from playwright.sync_api import Error as PlaywrightError  # optional: playwright is a dev/test tool

    try:
        shots = capture_all(args.url, args.out, args.image, args.chromium, args.width, args.height, model=args.model)
        if args.phone:
            shots.update(capture_all(args.url, args.out, args.image, args.chromium, *PHONE, prefix="phone_",
                                     model=args.model))
    except (PlaywrightError, FileNotFoundError) as error:  # no browser, no dashboard at --url, a page that changed
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    for name, path in shots.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
