from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from newsletter.config import load_settings, parse_duration
from newsletter.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    settings = load_settings()
    assert settings.config_path is None
    assert settings.database.url == "sqlite:///.newsletter/newsletter.db"
    assert settings.delivery.transport == "maildir"
    assert settings.smtp.effective_port == 587


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[site]\nposts_dir = "content/_posts"\n[delivery]\noutbox_dir = "out"\n')
    settings = load_settings(cfg)
    assert settings.site.posts_dir == tmp_path / "content/_posts"
    assert settings.delivery.outbox_dir == tmp_path / "out"


def test_default_folders_are_beside_the_config_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`newsletter --config ../site/newsletter.toml posts` from another folder
    looked for posts/ there, and wrote the outbox (live unsubscribe links)
    into that folder's .newsletter/, while the database was beside the file."""
    (tmp_path / "site").mkdir()
    cfg = write(tmp_path / "site", '[site]\ntitle = "T"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(cfg)
    assert settings.site.posts_dir == tmp_path / "site" / "posts"
    assert settings.delivery.outbox_dir == tmp_path / "site" / ".newsletter" / "outbox"
    assert settings.state_dir == tmp_path / "site" / ".newsletter"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[schedule]\nscan_interval = "1ms"\n', "schedule.scan_interval"),  # a busy loop
        ("[schedule]\nscan_interval = inf\n", "schedule.scan_interval"),  # OverflowError
        ('[schedule]\nscan_interval = "99999999999h"\n', "schedule.scan_interval"),
        ("[delivery]\nrate_per_second = inf\n", "delivery.rate_per_second"),
        ("[delivery]\nrate_per_second = -5\n", "delivery.rate_per_second"),
        ("[delivery]\nrate_per_second = nan\n", "delivery.rate_per_second"),
        ("[delivery]\nconcurrency = 100000\n", "delivery.concurrency"),  # no threads left
        ("[delivery]\nconcurrency = 0\n", "delivery.concurrency"),
        ("[delivery]\nmax_per_hour = 0\n", "delivery.max_per_hour"),  # paused for ever
        ("[delivery]\nmax_per_day = -1\n", "delivery.max_per_day"),
        ("[delivery]\nlease_seconds = 0\n", "delivery.lease_seconds"),
        ("[delivery]\nbackoff_base = -1\n", "delivery.backoff_base"),
        ("[delivery]\nbackoff_cap = nan\n", "delivery.backoff_cap"),
        ("[smtp]\ntimeout = 0\n", "smtp.timeout"),
        ("[smtp]\ntimeout = nan\n", "smtp.timeout"),
    ],
)
def test_numbers_out_of_range_are_refused_with_their_key(
    tmp_path: Path, text: str, key: str
) -> None:
    with pytest.raises(ConfigError, match="must be at least") as info:
        load_settings(write(tmp_path, text))
    assert info.value.key == key


def test_numbers_at_the_edges_of_their_range_are_taken(tmp_path: Path) -> None:
    text = (
        '[schedule]\nscan_interval = "0.5s"\n[delivery]\nrate_per_second = 0\n'
        "concurrency = 1000\nmax_per_hour = 1\nbackoff_base = 0\n[smtp]\ntimeout = 3600\n"
    )
    settings = load_settings(write(tmp_path, text))
    assert (settings.schedule.scan_interval, settings.delivery.concurrency) == (0.5, 1000)


def test_env_var_selects_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, '[site]\ntitle = "From env"\n')
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(cfg))
    assert load_settings().site.title == "From env"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[site]\ntimezone = 'Nowhere/Land'\n", "site.timezone"),
        ("[delivery]\ntransport = 'pigeon'\n", "delivery.transport"),
        ("[delivery]\nconcurrency = 'two'\n", "delivery.concurrency"),
        ("[smtp]\nsecurity = 'ssl3'\n", "smtp.security"),
        ("[site]\ncolour = 'blue'\n", "site.colour"),
        # Filled in from _config.yml, not keys of the file: `jekyll = "x"` was
        # accepted and every command then died with a traceback.
        ("[site]\njekyll = 'x'\n", "site.jekyll"),
        ("[site]\nsource_dir = 'x'\n", "site.source_dir"),
        ("[lists.weekly]\nmode = 'digest'\n", "lists.weekly.cron"),
        ("[schedule]\nscan_interval = 'soon'\n", "schedule.scan_interval"),
        ("[schedule]\nsince = 'yesterday'\n", "schedule.since"),
        # A link "valid" past the year 9999 made every signup a 500.
        ("[signup]\nconfirm_hours = 100000000\n", "signup.confirm_hours"),
        ("[signup]\nconfirm_hours = inf\n", "signup.confirm_hours"),
        ("[signup]\nconfirm_hours = nan\n", "signup.confirm_hours"),
        # A limit below 1 was accepted, then refused every signup (429 or no email).
        ("[signup]\nper_ip_per_hour = -1\n", "signup.per_ip_per_hour"),
        ("[signup]\nper_ip_per_hour = 0\n", "signup.per_ip_per_hour"),
        ("[signup]\nper_address_per_hour = -3\n", "signup.per_address_per_hour"),
        ("[signup]\nper_address_per_hour = 0\n", "signup.per_address_per_hour"),
        ("[signup]\npending_per_address_per_day = -1\n", "signup.pending_per_address_per_day"),
        ("[signup]\npending_per_address_per_day = 0\n", "signup.pending_per_address_per_day"),
        ("[signup]\nper_ip_per_hour = true\n", "signup.per_ip_per_hour"),
        # soft_days = 0 was reported under bounces.soft_limit.
        ("[bounces]\nsoft_days = 0\n", "bounces.soft_days"),
        ("[bounces]\nsoft_limit = 0\n", "bounces.soft_limit"),
        # A section given as a value or an array of tables: a TypeError or
        # ValueError traceback for [site], read before the others were checked.
        ("site = 1\n", "site"),
        ("[[site]]\nurl = 'https://example.com'\n", "site"),
        ("email = 'x'\n", "email"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert info.value.key == key
    assert key in str(info.value)


def test_the_event_loop_is_auto_or_asyncio(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).delivery.event_loop == "auto"
    chosen = load_settings(write(tmp_path, "[delivery]\nevent_loop = 'asyncio'\n"))
    assert chosen.delivery.event_loop == "asyncio"
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[delivery]\nevent_loop = 'uvloop'\n"))
    assert info.value.key == "delivery.event_loop"
    assert "expected 'auto' or 'asyncio', got 'uvloop'" in str(info.value)


@pytest.mark.parametrize(
    "mailto",
    [
        "unsubscribe",
        "a b@example.com",
        "unsub@example.com>, <https://evil.example/",
        "unsub@example.com, other@example.com",
        '"unsub"@example.com',
        "unsub@example.com?subject=a b",
        "https://example.com/unsubscribe",
    ],
)
def test_unsubscribe_mailto_must_be_one_address(tmp_path: Path, mailto: str) -> None:
    """It goes verbatim into every List-Unsubscribe header: a space, a '>' or
    a second address made it an unusable (or a second, foreign) URL."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f"[unsubscribe]\nmailto = '{mailto}'\n"))
    assert info.value.key == "unsubscribe.mailto"
    assert repr(mailto) in str(info.value)


@pytest.mark.parametrize(
    "mailto",
    ["unsub@example.com", "mailto:unsub@example.com?subject=stop", "ünsub@exämple.com"],
)
def test_unsubscribe_mailto_accepts_an_address_or_a_mailto_url(tmp_path: Path, mailto: str) -> None:
    path = write(tmp_path, f"[unsubscribe]\nmailto = '{mailto}'\n")
    assert load_settings(path).unsubscribe.mailto == mailto


@pytest.mark.parametrize(
    "url",
    ["news.example.com", "/news", "ftp://news.example.com", "https://", "https://a b.example.com"],
)
def test_public_url_must_be_a_web_url(tmp_path: Path, url: str) -> None:
    """Every email's List-Unsubscribe and footer links start with it: without a
    scheme and host they are links no mailbox provider or reader can follow."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, f'[web]\npublic_url = "{url}"\n'))
    assert info.value.key == "web.public_url"
    assert repr(url) in str(info.value)


@pytest.mark.parametrize(
    "url", ["https://news.example.com", "http://127.0.0.1:8080", "https://example.com/news/"]
)
def test_public_url_accepts_web_urls(tmp_path: Path, url: str) -> None:
    assert load_settings(write(tmp_path, f'[web]\npublic_url = "{url}"\n')).web.public_url == url


def test_a_config_file_that_is_not_utf8_is_one_error(tmp_path: Path) -> None:
    """TOML is UTF-8 (a file saved as Latin-1 or UTF-16): not a traceback."""
    cfg = tmp_path / "newsletter.toml"
    cfg.write_bytes('[site]\ntitle = "Café"\n'.encode("utf-16"))
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert info.value.path == cfg
    assert "not UTF-8" in str(info.value)


def test_an_unreadable_config_file_is_one_error(tmp_path: Path) -> None:
    cfg = tmp_path / "newsletter.toml"
    cfg.mkdir()  # a folder where the file should be (as with NEWSLETTER_CONFIG)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert info.value.path == cfg
    assert "cannot read" in str(info.value)


def test_broken_toml_reports_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, '[site]\ntitle = "ok"\nurl = \n'))
    assert info.value.line == 3


def test_since_without_zone_uses_the_site_timezone(tmp_path: Path) -> None:
    cfg = write(
        tmp_path, '[site]\ntimezone = "Europe/Istanbul"\n[schedule]\nsince = "2024-05-01"\n'
    )
    since = load_settings(cfg).schedule.since
    assert since is not None and since.utcoffset() is not None
    assert since.isoformat() == "2024-05-01T00:00:00+03:00"


def test_since_accepts_a_toml_datetime(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[schedule]\nsince = 2024-05-01T10:00:00Z\n")
    since = load_settings(cfg).schedule.since
    assert since == datetime.fromisoformat("2024-05-01T10:00:00+00:00")


@pytest.mark.parametrize(
    ("value", "seconds"), [(60, 60.0), ("90s", 90.0), ("5m", 300.0), ("2h", 7200.0)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "setup", "message"),
    [
        ("1", None, r"site\.jekyll_config.*expected a path to a _config\.yml, got 1"),
        ('["_config.yml"]', None, r"expected a path to a _config\.yml, got \['_config\.yml'\]"),
        ('"blog"', "folder", r"blog.*cannot read the Jekyll configuration"),
        ('"_config.yml"', "latin-1", r"_config\.yml.*not UTF-8 text"),
        ('"bad\\u0000name.yml"', None, r"cannot read the Jekyll configuration"),
    ],
    ids=["number", "list", "a-folder", "latin-1", "nul"],
)
def test_an_unusable_jekyll_config_is_one_error_naming_it(
    tmp_path: Path, value: str, setup: str | None, message: str
) -> None:
    # Each was a TypeError, IsADirectoryError, UnicodeDecodeError or
    # ValueError traceback out of every command.
    if setup == "folder":
        (tmp_path / "blog").mkdir()
    if setup == "latin-1":
        (tmp_path / "_config.yml").write_bytes("title: Caf\xe9\n".encode("latin-1"))
    cfg = write(tmp_path, f"[site]\njekyll_config = {value}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg)


def test_jekyll_config_supplies_site_values(tmp_path: Path) -> None:
    site = tmp_path / "blog"
    (site / "_posts").mkdir(parents=True)
    (site / "_config.yml").write_text(
        "title: Jekyll Blog\nurl: https://blog.example.org\nbaseurl: /notes\n"
        "timezone: America/Chicago\npermalink: pretty\nexcerpt_separator: <!--more-->\n"
        "author:\n  name: Sam Example\n",
        encoding="utf-8",
    )
    cfg = write(tmp_path, '[site]\njekyll_config = "blog/_config.yml"\ntitle = "Override"\n')
    s = load_settings(cfg).site
    assert s.title == "Override"  # newsletter.toml wins over _config.yml
    assert (s.url, s.baseurl, s.timezone) == (
        "https://blog.example.org",
        "/notes",
        "America/Chicago",
    )
    assert s.permalink == "/:categories/:year/:month/:day/:title/"
    assert s.excerpt_separator == "<!--more-->"
    assert s.author == "Sam Example"
    assert s.posts_dir == site / "_posts"


def test_password_comes_only_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path, '[smtp]\npassword_env = "TEST_NL_PASSWORD"\n')
    settings = load_settings(cfg)
    monkeypatch.delenv("TEST_NL_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="TEST_NL_PASSWORD is not set"):
        settings.smtp.password()
    monkeypatch.setenv("TEST_NL_PASSWORD", "s3cret")
    assert settings.smtp.password() == "s3cret"


def test_the_database_url_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PostgreSQL URL carries a password: it belongs in the environment.
    config = tmp_path / "newsletter.toml"
    config.write_text('[database]\nurl = "sqlite:///file.db"\n')
    assert load_settings(config).database.url == "sqlite:///file.db"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "postgresql+psycopg://u:p@db.example.net/n")
    assert load_settings(config).database.url == "postgresql+psycopg://u:p@db.example.net/n"
    config.write_text('[database]\nurl_env = "MY_DB"\n')
    monkeypatch.setenv("MY_DB", "sqlite:///other.db")
    assert load_settings(config).database.url == "sqlite:///other.db"


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://", "SQLITE://?cache=shared"]
)
def test_a_database_in_memory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """It forgot every mailing when the command ended: each run mailed every
    post to everyone again and said "Sent 0" (its threads could not use it)."""
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match="in-memory SQLite database forgets") as info:
        load_settings(config)
    assert info.value.key == "database.url"
    config.write_text("")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", url)
    with pytest.raises(ConfigError, match=r"\(from \$NEWSLETTER_DATABASE_URL\)"):
        load_settings(config)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", "sqlite:///memory.db")  # a file
    assert load_settings(config).database.url == "sqlite:///memory.db"


@pytest.mark.parametrize(
    ("first", "second", "ident"),
    [("AbC", "abc", "abc"), ("a..b.", "a-b", "a-b"), ("My_List_2", "my-list-2", "my-list-2")],
)
def test_two_lists_one_list_id_is_refused(
    tmp_path: Path, first: str, second: str, ident: str
) -> None:
    """RFC 2919: readers' filters sort mail by List-Id; two lists must not share one."""
    cfg = write(tmp_path, f'[lists."{first}"]\n[lists."{second}"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert caught.value.key == f"lists.{second}"
    assert f"lists {first!r} and {second!r} would share one List-Id ({ident}." in str(caught.value)
    assert set(load_settings(write(tmp_path, f'[lists."{first}"]\n[lists.other]\n')).lists) == {
        first,
        "other",
    }


@pytest.mark.parametrize("name", ["-.-", "bücher", "_x"])
def test_a_bad_list_name_says_what_the_rule_is(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="starts with an ASCII letter or digit"):
        load_settings(write(tmp_path, f'[lists."{name}"]\n'))
