"""Where the browser tests find Chromium and Playwright.

Without them the browser tests are skipped, except where CI sets
NEWSLETTER_REQUIRE_BROWSER=1: there a missing browser fails the run instead of
silently skipping the only tests that load the pages in a real browser.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def require_browser() -> ModuleType:
    """`playwright.sync_api`, once Chromium is known to be there; else skip or fail."""
    required = os.environ.get("NEWSLETTER_REQUIRE_BROWSER") == "1"
    if not CHROMIUM.exists():
        reason = f"needs Debian's chromium at {CHROMIUM}"
        if required:
            pytest.fail(reason + " (NEWSLETTER_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    if required:
        import playwright.sync_api

        return playwright.sync_api
    return pytest.importorskip("playwright.sync_api")
