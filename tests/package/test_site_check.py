"""scripts/check_site.py, the browser check of the documentation site, can fail: it reports
a console.error, an uncaught exception, a script that does not load and a plotly figure
that was not drawn, and passes a clean
page. (.ci/run runs it on the built site.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_site.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_site", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_check_reports_errors_and_passes_a_clean_page(tmp_path: Path) -> None:
    check = _checker()
    browser = check.chromium()
    if browser is None:
        pytest.skip("site check SKIPPED: no Chromium found; install Debian's `chromium`")
    clean = tmp_path / "clean.html"
    clean.write_text("<html><head><title>ok</title></head><body><p>fine</p></body></html>")
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<html><head><script src="missing.js"></script></head><body>'
        '<div class="plotly-graph-div" id="fig-1"></div>'
        '<script>console.error("bad thing"); notDefined();</script></body></html>'
    )
    assert check.page_errors(clean, browser) == []
    errors = check.page_errors(broken, browser)
    assert any("missing.js" in e for e in errors), errors
    assert "bad thing" in errors, errors
    assert any("notDefined" in e for e in errors), errors
    assert "plotly figure fig-1 was not drawn" in errors, errors
