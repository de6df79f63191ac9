"""A screenshot of the HTML viewer, taken in headless Chromium (Playwright drives it).

    monai-emma phantom sample/
    monai-emma view sample/dicom/mri sample/dicom/pet --suv -o viewer.html
    python scripts/viewer_screenshot.py viewer.html docs/images/viewer.png

Needs Chromium (``apt-get install chromium``) and ``pip install playwright``; fails with the
page's console errors if there are any.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", help="a viewer .html file")
    p.add_argument("png", help="where the screenshot goes")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1150)
    p.add_argument("--browser", default=shutil.which("chromium") or "chromium")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.browser, args=[*flags, "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(Path(args.page).resolve().as_uri())
        page.wait_for_function("window.emmaViewer && window.emmaViewer.ready", timeout=120_000)
        page.screenshot(path=args.png, full_page=True)
        browser.close()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
