"""Every fixture site under tests/fixtures/jekyll, built by Debian's `jekyll`
and read by `newsletter`: each post's URL, date, title, byline, excerpt text
and body text must agree (tests/jekyll_oracle.py does the work).

Skipped when `jekyll` is not installed, unless NEWSLETTER_REQUIRE_JEKYLL=1
(CI sets it, so a missing oracle fails loudly instead of passing quietly).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jekyll_oracle import FIELDS, Comparison, build, compare, jekyll_available, sites

if not jekyll_available():
    if os.environ.get("NEWSLETTER_REQUIRE_JEKYLL") == "1":
        raise RuntimeError("NEWSLETTER_REQUIRE_JEKYLL=1 but `jekyll` is not on PATH")
    pytest.skip("Debian's jekyll is not installed", allow_module_level=True)

_CACHE: dict[str, Comparison] = {}


@pytest.fixture(scope="session")
def oracle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jekyll-oracle")


def comparison(site: str, work: Path) -> Comparison:
    """One Jekyll build and one comparison per site per test session."""
    if site not in _CACHE:
        _CACHE[site] = compare(site, build(site, work), work / site)
    return _CACHE[site]


@pytest.mark.parametrize("site", sites())
def test_every_post_jekyll_publishes_is_read(site: str, oracle_dir: Path) -> None:
    result = comparison(site, oracle_dir)
    assert result.posts > 0
    assert result.missing == ()
    assert result.extra == ()


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("site", sites())
def test_field_agrees_with_jekyll(site: str, field: str, oracle_dir: Path) -> None:
    result = comparison(site, oracle_dir)
    wrong = [m for m in result.mismatches if m.field == field]
    assert not wrong, "\n".join(
        f"{m.path}:\n  jekyll: {m.jekyll!r}\n  ours:   {m.ours!r}" for m in wrong
    )
