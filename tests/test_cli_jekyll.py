"""`init`, `check` and `posts` on a Jekyll site: read _config.yml, never
override it, never report "0 posts" silently, flag placeholders before SMTP."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.config import load_settings

NEWS = Path(__file__).resolve().parent / "fixtures" / "jekyll" / "news"


@pytest.fixture
def news_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "news"
    shutil.copytree(NEWS, site)
    (site / "newsletter.toml").unlink()
    monkeypatch.chdir(site)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    return site


def test_init_in_a_jekyll_site_reads_config_yml(news_site: Path) -> None:
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1:7] == [
        "created subscribers/",  # before the summary: made even when it fails
        "found a Jekyll site (_config.yml):",
        "  posts: 11 in en/_posts, en/news/_posts, ja/news/_posts",
        "  url: https://www.example.org",
        "  timezone: Asia/Tokyo",
        "  authors: Hana Okabe, Kenji Mori",
    ]
    assert "created posts/" not in result.stdout
    assert not (news_site / "posts").exists()
    written = tomllib.loads((news_site / "newsletter.toml").read_text())
    # Nothing that would silently override _config.yml.
    assert written["site"] == {"jekyll_config": "_config.yml"}
    settings = load_settings(news_site / "newsletter.toml")
    assert (settings.site.url, settings.site.timezone) == ("https://www.example.org", "Asia/Tokyo")
    checked = CliRunner().invoke(main, ["check"])
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.splitlines()[-1].startswith("11 posts checked")


def test_init_says_when_the_timezone_is_not_set(news_site: Path) -> None:
    config = news_site / "_config.yml"
    config.write_text(config.read_text().replace("timezone: Asia/Tokyo\n", ""))
    result = CliRunner().invoke(main, ["init"])
    assert "  timezone: UTC (not set in _config.yml)" in result.stdout.splitlines()
    checked = CliRunner().invoke(main, ["check"])
    assert (
        "_config.yml: timezone: warning: _config.yml sets no timezone: Jekyll then uses the "
        "build machine's, newsletter UTC; dates and URLs may differ by a day"
    ) in checked.output


def test_init_on_the_config_jekyll_new_writes_finishes(news_site: Path) -> None:
    """`jekyll new` writes `url: ""`.  Before, `init` wrote newsletter.toml and
    then stopped (exit 1: site.url is no absolute URL), with no subscribers/
    and no summary, and a second `init` refused the file it had written."""
    config = news_site / "_config.yml"
    config.write_text(config.read_text().replace("url: https://www.example.org", 'url: ""'))
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    assert (
        "  url: not set (set url: in _config.yml, or [site] url in newsletter.toml)"
        in result.stdout.splitlines()
    )
    assert "created subscribers/" in result.stdout
    assert (news_site / "subscribers").is_dir()
    checked = CliRunner().invoke(main, ["check"])
    assert checked.exit_code == 1
    assert (
        "got '' (from _config.yml: set url: there, or [site] url in newsletter.toml)"
        in checked.output
    )


def test_no_posts_is_a_warning_saying_where_it_looked(news_site: Path) -> None:
    CliRunner().invoke(main, ["init"])
    for folder in ("en", "ja"):
        shutil.rmtree(news_site / folder)
    for command in (["check"], ["posts"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0
        expected = (
            "newsletter.toml: site.posts_dir: warning: no posts found in every _posts "
            f"folder under {news_site.resolve()} (Jekyll's rules)"
        )
        assert expected in result.output, command


def test_no_posts_outside_jekyll_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "posts").mkdir()
    cfg = tmp_path / "newsletter.toml"
    cfg.write_text('[site]\nposts_dir = "posts"\n[lists.main]\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(cfg), "posts"])
    assert f"warning: no posts found in {tmp_path / 'posts'}" in result.stderr


def test_check_flags_placeholders_when_sending_by_smtp(news_site: Path) -> None:
    CliRunner().invoke(main, ["init"])
    cfg = news_site / "newsletter.toml"
    maildir = CliRunner().invoke(main, ["check"])
    assert "placeholder" not in maildir.output  # nothing reaches a reader yet
    cfg.write_text(cfg.read_text().replace('transport = "maildir"', 'transport = "smtp"'))
    config = news_site / "_config.yml"
    config.write_text(
        config.read_text().replace("https://www.example.org", "http://localhost:4000")
    )
    result = CliRunner().invoke(main, ["check"], env={"NEWSLETTER_SMTP_PASSWORD": "x"})
    out = result.output
    assert "web.public_url: warning: public_url is https://news.example.com" in out
    assert "site.url: warning: the site's url is http://localhost:4000 (in _config.yml)" in out
    assert (
        "email.from: warning: from is Example Language News <newsletter@example.com>: a placeholder"
        in out
    )
    assert result.exit_code == 0  # warnings, not errors


@pytest.mark.parametrize(
    ("title", "sender"),
    [
        (None, "My blog <newsletter@example.com>"),  # _config.yml names none
        ("Field Notes", "Field Notes <newsletter@example.com>"),
        ('Notes, "Quoted" & Café', '"Notes, \\"Quoted\\" & Café" <newsletter@example.com>'),
    ],
)
def test_init_names_the_sender_after_the_sites_title(
    news_site: Path, title: str | None, sender: str
) -> None:
    """The starter's From is the blog's name from _config.yml (it was "My
    blog" whatever the site); the address stays a placeholder to set."""
    config = news_site / "_config.yml"
    lines = [ln for ln in config.read_text().splitlines() if not ln.startswith("title:")]
    if title is not None:
        lines.append(f"title: {json.dumps(title)}")
    config.write_text("\n".join(lines) + "\n")
    assert CliRunner().invoke(main, ["init"]).exit_code == 0
    written = tomllib.loads((news_site / "newsletter.toml").read_text())
    assert written["email"]["from"] == sender
    assert load_settings(news_site / "newsletter.toml").email.from_ == sender
