"""Take docs/ui.png: the page at /ui after classifying one of its examples, in headless Chromium.

Run from the repository root with a trained model under models/ and the [serve] extra:
    python scripts/screenshot_page.py [--chromium /usr/bin/chromium] [--out docs/ui.png]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

from llm_router.service.page import EXAMPLES


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", default="docs/ui.png")
    parser.add_argument("--example", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "llm_router", "serve", "--port", str(port)])
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/ui/", wait_until="domcontentloaded")
            page.locator("#abstract textarea").fill(EXAMPLES[args.example])
            page.locator("#classify").click()
            page.locator("#answer h2").wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # let the bar chart draw
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
