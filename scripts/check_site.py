"""Open pages of the built documentation site in headless Chromium and fail on any console
error, uncaught exception or resource that does not load.

    python scripts/check_site.py [SITE_DIR] [PAGE ...]

Default pages: the home page and the first notebook page. Each page is copied next to itself
with a probe script first in its <head> (so its relative links still resolve); the probe
records console.error calls, uncaught errors and failed loads into the DOM, which Chromium
dumps. Exit code 1 lists the errors; 2: no Chromium or no such page.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
DEFAULT_PAGES = ("index.html", "notebooks/01_saliency_flows/index.html")
PROBE = """<script>
(function () {
  var errors = [];
  function note(text) { errors.push(String(text)); }
  var original = console.error;
  console.error = function () {
    note(Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("error", function (event) {
    var target = event.target;
    if (target && target !== window && (target.src || target.href)) {
      note("failed to load " + (target.src || target.href));
    } else {
      note("uncaught: " + (event.message || event.error));
    }
  }, true);
  window.addEventListener("unhandledrejection", function (event) {
    note("unhandled rejection: " + event.reason);
  });
  window.addEventListener("load", function () {
    setTimeout(function () {
      var pre = document.createElement("pre");
      pre.id = "site-check-errors";
      pre.textContent = JSON.stringify(errors);
      document.body.appendChild(pre);
    }, 1500);
  });
})();
</script>"""


def chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def page_errors(page: Path, browser: str) -> list[str]:
    """Errors recorded while ``page`` loads in headless Chromium."""
    import json

    html = page.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", html)
    if head is None:
        return [f"{page}: no <head>"]
    probed = page.with_name(f".site-check-{page.name}")
    probed.write_text(html[: head.end()] + PROBE + html[head.end() :], encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                     "--allow-file-access-from-files", "--virtual-time-budget=15000",
                     "--dump-dom"]  # fmt: skip
            done = subprocess.run(
                [browser, *flags, probed.resolve().as_uri()],
                capture_output=True, text=True, timeout=240, check=False,
            )  # fmt: skip
    finally:
        probed.unlink(missing_ok=True)
    if done.returncode != 0:
        return [f"chromium exited {done.returncode}: {done.stderr[-1000:]}"]
    found = re.search(r'<pre id="site-check-errors">(.*?)</pre>', done.stdout, re.S)
    if found is None:
        return ["the page never finished loading (no probe output)"]
    import html as html_lib

    return list(json.loads(html_lib.unescape(found.group(1))))


def main(argv: list[str]) -> int:
    site = Path(argv[0]) if argv else Path("site")
    pages = argv[1:] or list(DEFAULT_PAGES)
    browser = chromium()
    if browser is None:
        print(f"check_site: no Chromium found (tried {', '.join(BROWSERS)})", file=sys.stderr)
        return 2
    failed = False
    for name in pages:
        page = site / name
        if not page.is_file():
            print(f"check_site: {page} does not exist (build the site first)", file=sys.stderr)
            return 2
        errors = page_errors(page, browser)
        print(f"{name}: {len(errors)} console error(s)")
        for error in errors:
            print(f"  {error}")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
