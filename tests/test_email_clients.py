"""An independent HTML-email linter (npm's doiuse-email, caniemail data) on
every email type, for Outlook for Windows, Gmail and Apple Mail.

The linter is installed with

    npm install --no-audit --no-fund --prefix .cache/node doiuse-email@0.4.1

(.ci/run does it; NEWSLETTER_NODE_PREFIX points elsewhere).  Without it the
test installs it there itself when npm can reach the registry, else skips
(fails under NEWSLETTER_REQUIRE_LINTERS=1).

Rule: the inline styles use nothing a client lacks; what a client lacks may
appear only inside the `<style>` block's @media rules, which Outlook skips as
a whole (it keeps square corners and its own wrapping: the degradation is
graceful).  The accepted exceptions are listed in docs/templates.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from email_lint_support import html_pages

ROOT = Path(__file__).resolve().parent.parent
PREFIX = Path(os.environ.get("NEWSLETTER_NODE_PREFIX", ROOT / ".cache" / "node"))
VERSION = "0.4.1"
CLIENTS = "outlook.windows,gmail.*,apple-mail.*"

# (feature as doiuse names it, client) accepted, with the reason; each must be
# listed in docs/templates.md.
ACCEPTED = {
    ("@media", "outlook.windows"): "Outlook ignores @media: it gets the inline desktop layout",
    ("@media", "gmail.mobile-webmail"): "no <style> at all there: the inline desktop layout",
    ("white-space", "outlook.windows"): (
        "pre-wrap on code, inline for clients without <style>; Word keeps <pre> as it was"
    ),
    ("Local anchors", "gmail.ios"): (
        "footnote links inside a full email: inert there, the note is just below"
    ),
    ("display:none", "gmail.mobile-webmail"): (
        "the hidden preheader: Gmail's legacy mobile web client shows it in 1 px type"
    ),
}


def linter() -> Path:
    cli = PREFIX / "node_modules" / "doiuse-email" / "bin" / "cli.js"
    if cli.exists():
        return cli
    required = os.environ.get("NEWSLETTER_REQUIRE_LINTERS") == "1"
    npm = shutil.which("npm")
    if npm and shutil.which("node"):
        PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(PREFIX),
             f"doiuse-email@{VERSION}"],
            capture_output=True, timeout=300, check=False,
        )  # fmt: skip
    if cli.exists():
        return cli
    if required:
        pytest.fail(f"doiuse-email not installed under {PREFIX}")
    pytest.skip(f"doiuse-email not installed under {PREFIX} (npm unavailable)")


def lint(cli: Path, html: str, tmp_path: Path, name: str) -> dict[str, list[str]]:
    path = tmp_path / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    result = subprocess.run(
        ["node", str(cli), f"--email-clients={CLIENTS}", str(path)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    data = json.loads(result.stdout)
    return {"errors": data.get("errors", []), "notes": data.get("notes", [])}


def unsupported(errors: list[str]) -> set[tuple[str, str]]:
    found = set()
    for error in errors:
        match = re.fullmatch(r"`(.+)` is not supported by `(.+)`", error)
        assert match is not None, error
        found.add((match.group(1), match.group(2)))
    return found


STYLE = re.compile(r"<style\b[^>]*>.*?</style>", re.S | re.I)


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return html_pages()


@pytest.mark.parametrize("kind", ["post", "full", "digest", "test-send"])
def test_inline_markup_uses_nothing_the_clients_lack(
    pages: dict[str, str], kind: str, tmp_path: Path
) -> None:
    cli = linter()
    html = pages[kind]
    inline_only = STYLE.sub("", html)
    assert inline_only != html  # there was a <style> block to take out
    assert unsupported(lint(cli, inline_only, tmp_path, kind)["errors"]) <= set(ACCEPTED)


@pytest.mark.parametrize("kind", ["post", "full", "digest", "test-send"])
def test_the_rest_is_in_media_rules_outlook_skips(
    pages: dict[str, str], kind: str, tmp_path: Path
) -> None:
    cli = linter()
    html = pages[kind]
    style = "".join(STYLE.findall(html))
    outside_media = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", style)
    assert re.sub(r"</?style[^>]*>", "", outside_media).strip() == ""  # only @media rules
    found = unsupported(lint(cli, html, tmp_path, kind)["errors"])
    skip_media = {client for feature, client in found if feature == "@media"}
    assert skip_media <= {c for f, c in ACCEPTED if f == "@media"}
    for feature, client in found:
        if (feature, client) in ACCEPTED:
            continue
        # Anything else is a property used only inside @media, for a client
        # that skips @media rules altogether.
        assert client in skip_media, (feature, client)
        assert re.search(rf"(?<![\w-]){re.escape(feature)}\s*:", style), (feature, client)
        assert not re.search(rf"(?<![\w-]){re.escape(feature)}\s*:", STYLE.sub("", html)), feature


def test_accepted_exceptions_are_documented() -> None:
    docs = (ROOT / "docs" / "templates.md").read_text()
    for (feature, client), _reason in ACCEPTED.items():
        assert f"`{feature}`" in docs and client in docs
