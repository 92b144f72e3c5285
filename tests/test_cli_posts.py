"""`newsletter posts`, `check` and `init` through click's CliRunner."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.cli import posts as cli_posts
from newsletter.config import load_settings
from newsletter.email import render
from newsletter.errors import TemplateError

FIXTURES = Path(__file__).parent / "fixtures" / "posts"


@pytest.fixture
def fixture_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Jekyll-shaped fixture site (with its non-UTF-8 post) as the cwd."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURES / "site", site)
    latin1 = FIXTURES / "bytes" / "2024-01-04-latin1.md.bin"
    shutil.copy(latin1, site / "_posts" / "2024-01-04-latin1.md")
    monkeypatch.chdir(site)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    return site


def test_posts_json_has_every_field_and_status(sample_site: Path) -> None:
    result = CliRunner().invoke(main, ["posts", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["due", "due", "due", "future"]
    first = rows[0]
    assert set(first) == {
        "path",
        "id",
        "title",
        "date",
        "url",
        "authors",
        "tags",
        "categories",
        "status",
        "sent_to",
        "mailings",
    }
    assert first["sent_to"] == [] and first["mailings"] == []
    assert first["id"] == "how-sleep-consolidates-memory"
    assert first["date"] == "2024-10-14T07:30:00+03:00"
    assert first["url"] == (
        "https://fieldnotes.example.com/2024/10/14/how-sleep-consolidates-memory.html"
    )
    assert first["authors"] == [
        {"name": "Dana Okafor", "url": "https://example.org/people/dana-okafor"}
    ]
    assert first["tags"] == ["Neuroscience", "Sleep"]


def test_posts_shows_sent_after_a_send(sample_site: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["subscribers", "sync"]).exit_code == 0
    sent = runner.invoke(main, ["send", "the-octopus-and-its-distributed-mind", "--list", "sample"])
    assert sent.exit_code == 0, sent.output
    rows = json.loads(runner.invoke(main, ["posts", "--json"]).stdout)
    by_id = {r["id"]: r for r in rows}
    assert by_id["the-octopus-and-its-distributed-mind"]["status"] == "sent"
    assert by_id["the-octopus-and-its-distributed-mind"]["sent_to"] == ["sample"]
    assert by_id["how-sleep-consolidates-memory"]["status"] == "due"


def test_posts_without_since_counts_from_the_first_run(sample_site: Path) -> None:
    # No [schedule] since and no run yet: everything already dated would be
    # held back by the first run, and `posts` says so rather than "due".
    config = sample_site / "newsletter.toml"
    config.write_text(config.read_text().replace('since = "2024-01-01"\n', ""))
    rows = json.loads(CliRunner().invoke(main, ["posts", "--json"]).stdout)
    assert [r["status"] for r in rows] == ["before-since"] * 3 + ["future"]


def test_posts_before_since(sample_site: Path) -> None:
    config = sample_site / "newsletter.toml"
    config.write_text(config.read_text().replace('since = "2024-01-01"', 'since = "2024-11-01"'))
    rows = json.loads(CliRunner().invoke(main, ["posts", "--json"]).stdout)
    assert [r["status"] for r in rows] == ["before-since", "due", "due", "future"]


def test_posts_plain_lists_one_line_each_and_problems_on_stderr(sample_site: Path) -> None:
    (sample_site / "posts" / "2024-01-01-broken.md").write_text("---\ntitle: 'x\n---\n")
    result = CliRunner().invoke(main, ["posts"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "2024-10-14T07:30:00+03:00  due           How Sleep Turns the Day's Lessons into Lasting"
        " Memory  https://fieldnotes.example.com/2024/10/14/how-sleep-consolidates-memory.html"
    )
    assert lines[-1] == "4 posts, 1 error(s), 0 warning(s)"
    assert result.stderr == (
        "posts/2024-01-01-broken.md:2: error: invalid YAML in front matter: "
        "while scanning a quoted scalar: found unexpected end of stream\n"
    )


def test_posts_without_posts_folder_exits_1(sample_site: Path) -> None:
    shutil.rmtree(sample_site / "posts")
    result = CliRunner().invoke(main, ["posts"])
    assert result.exit_code == 1
    assert result.stderr == "error: posts: site.posts_dir: posts folder not found\n"


def test_check_sample_is_clean(sample_site: Path) -> None:
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "4 posts checked, 0 error(s), 0 warning(s)\n"


def test_check_reports_every_problem_and_exits_1(fixture_site: Path) -> None:
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stdout.splitlines()
    assert "_posts/2024-01-02-tab-yaml.md:4: error: invalid YAML in front matter: " in lines[0]
    assert lines[3] == (
        "_posts/2024-02-28-impossible-date.md:4: date: error: impossible date"
        " '2024-02-32 10:00:00 +0300' as a date (Jekyll fails on it too);"
        " write e.g. 2024-11-04 09:30:00 +0300"
    )
    assert (
        "_posts/2024-07-07-liquid-everything.md:17: warning: unknown Liquid tag {% youtube %} dropped"
        in lines
    )
    assert lines[-1] == "9 posts checked, 4 error(s), 6 warning(s)"


def test_check_json(fixture_site: Path) -> None:
    result = CliRunner().invoke(main, ["check", "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.stdout)
    assert {"severity": "error", "path": "_posts/2024-01-04-latin1.md", "line": 2, "key": None,
            "message": "not UTF-8 (byte 0xe9 at offset 14); save the file as UTF-8"} in problems  # fmt: skip


def test_check_with_only_warnings_exits_0(sample_site: Path) -> None:
    (sample_site / "posts" / "2024-01-01-warn.md").write_text(
        "---\ntitle: A\ntitle: B\n---\n{% youtube x %} Text.\n"
    )
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "posts/2024-01-01-warn.md:3: title: warning: duplicate front matter key 'title';"
        " the last value wins",
        "posts/2024-01-01-warn.md:5: warning: unknown Liquid tag {% youtube %} dropped",
        "5 posts checked, 0 error(s), 2 warning(s)",
    ]


def test_check_reports_template_errors_per_post(
    sample_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(post: object, settings: object, lst: object, **kwargs: object) -> object:
        raise TemplateError("unexpected '}'", path=Path("templates/email.html.j2"), line=12)

    monkeypatch.setattr(render, "render_email", broken)
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "templates/email.html.j2:12: error: unexpected '}'"
    assert len(lines) == 5


def test_check_bad_config_one_line(tmp_path: Path) -> None:
    config = tmp_path / "newsletter.toml"
    config.write_text("[site]\nurl = 42\n")
    result = CliRunner().invoke(main, ["--config", str(config), "check"])
    assert result.exit_code == 1
    assert result.stderr == f"error: {config}: site.url: expected a string, got 42\n"


def test_check_smtp_secret_missing(sample_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SMTP_PASSWORD", raising=False)
    config = sample_site / "newsletter.toml"
    config.write_text(config.read_text().replace('transport = "maildir"', 'transport = "smtp"'))
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1
    assert (
        "newsletter.toml: smtp.password_env: error: "
        "environment variable NEWSLETTER_SMTP_PASSWORD is not set"
    ) in result.stdout.splitlines()


def test_init_writes_a_working_starter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "newsletter.config.utcnow", lambda: datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    )
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "wrote newsletter.toml (since = 2026-05-04T03:02:01+00:00)\ncreated posts/\ncreated subscribers/\n"
    )
    settings = load_settings(tmp_path / "newsletter.toml")
    assert settings.schedule.since == datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert settings.email.subject == "{{ post.title }}"
    assert list(settings.lists) == ["main"]
    assert (tmp_path / "posts").is_dir() and (tmp_path / "subscribers").is_dir()
    # And the new site checks clean (no posts yet).
    checked = CliRunner().invoke(main, ["check"])
    assert checked.exit_code == 0, checked.output


def test_init_refuses_to_overwrite_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "newsletter.toml").write_text("# mine\n")
    (tmp_path / "posts").mkdir()
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 1
    assert result.stderr == "error: newsletter.toml: already exists (use --force to overwrite)\n"
    assert (tmp_path / "newsletter.toml").read_text() == "# mine\n"
    forced = CliRunner().invoke(main, ["init", "--force"])
    assert forced.exit_code == 0
    assert "created posts/" not in forced.stdout  # existing folders are left alone
    assert "[schedule]" in (tmp_path / "newsletter.toml").read_text()


def test_init_where_a_folder_is_a_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "ok" with posts/ missing (every later command then fails), and
    nothing written: fix the folder, run init again."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "posts").write_text("")
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 1
    assert result.stderr == "error: posts: exists and is not a folder\n"
    assert not (tmp_path / "newsletter.toml").exists()


def test_init_that_cannot_write_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "newsletter.toml").mkdir()  # stands for any unwritable file
    result = CliRunner().invoke(main, ["init", "--force"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: newsletter.toml: cannot write: ")
    assert result.stderr.count("\n") == 1


def test_help_texts(sample_site: Path) -> None:
    for command in ("posts", "check", "init"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0
        assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 4


def test_progress_bar_is_silent_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with cli_posts.progress_bar(100, "Reading") as advance:
        for _ in range(100):
            advance()
    assert capsys.readouterr() == ("", "")


def test_posts_listing_skips_html_but_keeps_problems(sample_site: Path) -> None:
    (sample_site / "posts" / "2024-01-01-empty.md").write_text("---\ntitle: Empty\n---\n")
    result = CliRunner().invoke(main, ["posts", "--json"])
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) == 5
    assert result.stderr == (
        "posts/2024-01-01-empty.md:4: warning: empty body: the email will have no excerpt\n"
    )


def test_check_reports_a_bad_digest_cron(tmp_path: Path) -> None:
    cfg = tmp_path / "newsletter.toml"
    (tmp_path / "posts").mkdir()
    cfg.write_text('[lists.weekly]\nmode = "digest"\ncron = "61 8 * * MON"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 1
    assert "lists.weekly.cron: error: invalid cron '61 8 * * MON'" in result.output


def test_check_reports_a_cron_that_never_comes_or_does_nothing(tmp_path: Path) -> None:
    """30 February never comes: the digest would never go (the daemon only
    logged "next at never"); a cron on a list that is no digest was ignored
    without a word while the list mailed every post at once."""
    cfg = tmp_path / "newsletter.toml"
    (tmp_path / "posts").mkdir()
    cfg.write_text(
        '[lists.never]\nmode = "digest"\ncron = "0 8 30 2 *"\n[lists.x]\ncron = "0 8 * * MON"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 1
    assert "lists.never.cron: error: '0 8 30 2 *' never comes (no such date)" in result.output
    assert "lists.x.cron: warning: no effect: the list mails each post" in result.output


def test_check_reports_a_bounce_maildir_that_is_not_one(tmp_path: Path) -> None:
    cfg = tmp_path / "newsletter.toml"
    (tmp_path / "posts").mkdir()
    cfg.write_text('[bounces]\naddress = "b@example.com"\nmaildir = "box"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 1
    assert "box: bounces.maildir: error: not a Maildir (no new/ and cur/)" in result.output
    for folder in ("new", "cur", "tmp"):
        (tmp_path / "box" / folder).mkdir(parents=True)
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert "bounces.maildir" not in result.output


def test_check_reports_a_login_without_tls(tmp_path: Path) -> None:
    """send refuses to log in without TLS (after planning the mailing); check said nothing."""
    cfg = tmp_path / "newsletter.toml"
    (tmp_path / "posts").mkdir()
    cfg.write_text(
        '[delivery]\ntransport = "smtp"\n[smtp]\nhost = "localhost"\nsecurity = "none"\n'
        'username = "me"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 1
    assert "smtp.username: error: refusing to log in without TLS" in result.output


def test_check_warns_when_smtp_mail_would_link_to_localhost(tmp_path: Path) -> None:
    cfg = tmp_path / "newsletter.toml"
    (tmp_path / "posts").mkdir()
    cfg.write_text(
        '[delivery]\ntransport = "smtp"\n[smtp]\nhost = "127.0.0.1"\n[lists.main]\n'
        '[web]\npublic_url = "http://127.0.0.1:8080"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 0  # a warning, not an error
    assert "web.public_url: warning: public_url is http://127.0.0.1:8080" in result.output
    cfg.write_text(cfg.read_text().replace("http://127.0.0.1:8080", "https://news.fieldnotes.test"))
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert "public_url" not in result.output


@pytest.mark.parametrize(
    ("email", "key", "reason"),
    [
        ('from = "not an address"', "email.from", "not a valid address: 'not an address'"),
        ('from = ""', "email.from", "expected one address, got ''"),
        ('reply_to = "a@b@c"', "email.reply_to", "not a valid address: 'a@b@c'"),
    ],
)
def test_check_refuses_a_sender_no_email_could_carry(
    tmp_path: Path, email: str, key: str, reason: str
) -> None:
    """Every render and send failed on such an address while `check` said 0 errors."""
    cfg = tmp_path / "newsletter.toml"
    (tmp_path / "posts").mkdir()
    cfg.write_text(f"[email]\n{email}\n[lists.main]\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 1
    assert f"{key}: error: {reason}" in result.output
    assert "1 error(s)" in result.output
    cfg.write_text('[email]\nfrom = "Notes <news@fieldnotes.test>"\nreply_to = "r@fieldnotes.test"\n'
                   "[lists.main]\n", encoding="utf-8")  # fmt: skip
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("url", ["fieldnotes.example.com", "", "ftp://fieldnotes.example.com"])
def test_a_site_url_without_scheme_and_host_is_refused(tmp_path: Path, url: str) -> None:
    """Every link of every email starts with it: relative links reach no reader."""
    cfg = tmp_path / "newsletter.toml"
    (tmp_path / "posts").mkdir()
    cfg.write_text(f'[site]\nurl = "{url}"\n[lists.main]\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 1
    assert f'site.url: expected an absolute URL like "https://blog.example.com", got {url!r}' in (
        result.output
    )
    for good in ("https://fieldnotes.example.com", "http://x.example.github.io/blog/"):
        cfg.write_text(f'[site]\nurl = "{good}"\n[lists.main]\n', encoding="utf-8")
        assert CliRunner().invoke(main, ["--config", str(cfg), "check"]).exit_code == 0


def test_a_jekyll_url_without_scheme_says_how_to_override_it(tmp_path: Path) -> None:
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_config.yml").write_text('url: ""\ntimezone: UTC\n', encoding="utf-8")
    cfg = tmp_path / "newsletter.toml"
    cfg.write_text('[site]\njekyll_config = "_config.yml"\n[lists.main]\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(cfg), "check"])
    assert result.exit_code == 1
    assert "(from _config.yml: set url: there, or [site] url in newsletter.toml)" in result.output
    cfg.write_text(
        '[site]\njekyll_config = "_config.yml"\nurl = "https://fieldnotes.example.com"\n'
        "[lists.main]\n",
        encoding="utf-8",
    )
    assert CliRunner().invoke(main, ["--config", str(cfg), "check"]).exit_code == 0


SLEEP = "posts/2024-10-14-how-sleep-consolidates-memory.md"
AGAIN = "posts/2024-12-09-how-sleep-consolidates-memory.md"


def _second_post_with_the_same_slug(site: Path, front: str = "") -> None:
    """A newer post whose file name differs from an older one's only by its
    date (a yearly "year in review", a series): Jekyll's two posts, one id here."""
    text = (site / SLEEP).read_text(encoding="utf-8")
    text = text.replace(
        "date:   2024-10-14 07:30:00 +0300", f"{front}date: 2024-12-09 08:00:00 +0000"
    )
    (site / AGAIN).write_text(text.replace("How Sleep Turns", "Sleep, Again, Turns"), "utf-8")


def test_two_posts_with_one_id_are_an_error_never_a_silent_skip(sample_site: Path) -> None:
    _second_post_with_the_same_slug(sample_site)
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1
    lines = [line for line in result.stdout.splitlines() if "same id" in line]
    assert len(lines) == 2, result.stdout  # one per file, each naming the other
    assert lines[0].startswith(f"{SLEEP}: id: error: ") and AGAIN in lines[0]
    assert lines[1].startswith(f"{AGAIN}: id: error: ") and SLEEP in lines[1]
    assert "id: 2024-12-09-how-sleep-consolidates-memory" in lines[1]
    # The daemon plans neither (which one would the id's mailing be?), says
    # why, and sends the rest.
    result = CliRunner().invoke(main, ["run", "--once"])
    assert result.exit_code == 1
    assert "same id" in result.stderr
    sent = json.loads(CliRunner().invoke(main, ["posts", "--json"]).stdout)
    by_path = {row["path"]: row for row in sent}
    assert by_path[SLEEP]["sent_to"] == [] and by_path[AGAIN]["sent_to"] == []
    assert by_path["posts/2024-11-18-measuring-reaction-times-in-python.md"]["sent_to"] == [
        "sample"
    ]
    # Nor does `send`, given the path of one: its mailing would be the other's too.
    result = CliRunner().invoke(main, ["send", AGAIN, "--list", "sample"])
    assert result.exit_code == 1
    assert "same id" in result.stderr and "id:" in result.stderr


def test_an_id_of_its_own_makes_the_newer_post_a_post_of_its_own(sample_site: Path) -> None:
    _second_post_with_the_same_slug(sample_site, front="id: sleep-again\n")
    assert "same id" not in CliRunner().invoke(main, ["check"]).output
    result = CliRunner().invoke(main, ["run", "--once"])
    assert result.exit_code == 0, result.stderr
    rows = {
        row["path"]: row for row in json.loads(CliRunner().invoke(main, ["posts", "--json"]).stdout)
    }
    assert rows[SLEEP]["sent_to"] == ["sample"] and rows[AGAIN]["sent_to"] == ["sample"]


def test_a_post_naming_an_unknown_list_is_a_warning_of_check_and_posts(sample_site: Path) -> None:
    """`lists: [weekley]` sends the post to no list: `check` says so before
    the daemon would (it warned only while planning), and `posts` too."""
    path = sample_site / "posts" / "2024-12-20-typo.md"
    path.write_text("---\ntitle: Typo\ndate: 2024-12-20\nlists: [weekley]\n---\nBody.\n")
    warning = "posts/2024-12-20-typo.md: lists: warning: names unknown list 'weekley'"
    result = CliRunner().invoke(main, ["check"])
    assert warning in result.stdout.splitlines(), result.stdout
    assert result.exit_code == 0  # a warning: the rest is fine
    result = CliRunner().invoke(main, ["posts"])
    assert warning in result.stderr.splitlines(), result.stderr
    result = CliRunner().invoke(main, ["run", "--once"])
    assert result.stderr.count("names unknown list 'weekley'") == 1, result.stderr
