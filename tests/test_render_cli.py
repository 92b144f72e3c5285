"""`newsletter render`: formats, output file, errors and exit codes."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from click.testing import CliRunner
from test_render_support import assert_wire_format

from newsletter.cli import main

POST = "measuring-reaction-times-in-python"


def run(*args: str) -> tuple[int, str, str, bytes]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr, result.stdout_bytes


def test_render_html_fills_sample_recipient(sample_site: Path) -> None:
    code, out, err, _ = run("render", POST)
    assert code == 0, err
    assert out.startswith("<!DOCTYPE html>")
    assert "https://news.fieldnotes.example.com/unsubscribe/SAMPLE-TOKEN" in out
    assert "reader@example.com" in out and "NLPH" not in out


def test_render_text(sample_site: Path) -> None:
    code, out, _, _ = run("render", POST, "--format", "text")
    assert code == 0
    assert "Measuring Reaction Times with a Few Lines of Python\n====" in out
    # (the URL on a line of its own: with a real token it is too long to share one)
    assert "Unsubscribe:\n<https://news.fieldnotes.example.com/unsubscribe/SAMPLE-TOKEN>" in out


def test_render_eml_is_a_whole_message(sample_site: Path) -> None:
    code, _, _, raw = run("render", POST, "--format", "eml", "--list", "sample")
    assert code == 0
    assert_wire_format(raw)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"] == "Sample Reader <reader@example.com>"
    assert msg["Subject"] == "Measuring Reaction Times with a Few Lines of Python"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_render_digest_list_and_output_file(sample_site: Path) -> None:
    target = sample_site / "out" / "digest.eml"
    target.parent.mkdir()
    code, out, err, _ = run(
        "render", POST, "--list", "weekly", "--format", "eml", "-o", str(target)
    )
    assert code == 0, err
    assert out == ""
    assert err.startswith(f"wrote {target} (")
    msg = email.message_from_bytes(target.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "Field Notes weekly digest: 1 new post"


def test_unknown_post_is_one_line_exit_1(sample_site: Path) -> None:
    code, out, err, _ = run("render", "no-such-post")
    assert code == 1
    # The post reader's message may add a hint; it is one line naming the ref.
    assert err.startswith("error: no post matches 'no-such-post'") and err.count("\n") == 1
    assert out == ""


def test_unknown_list_names_the_key(sample_site: Path) -> None:
    code, _, err, _ = run("render", POST, "--list", "nope")
    assert code == 1
    assert err == (
        "error: newsletter.toml: lists.nope: unknown list 'nope' "
        "(lists in the configuration: sample, weekly)\n"
    )


def test_bad_template_is_one_line_exit_1(sample_site: Path) -> None:
    templates = sample_site / "my-templates"
    templates.mkdir()
    (templates / "email.html.j2").write_text("{% for %}\n", encoding="utf-8")
    config = sample_site / "newsletter.toml"
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            'content = "excerpt"', 'content = "excerpt"\ntemplates_dir = "my-templates"'
        ),
        encoding="utf-8",
    )
    code, _, err, _ = run("render", POST)
    assert code == 1
    assert (
        err.startswith("error: ") and "my-templates/email.html.j2:1: template syntax error" in err
    )
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unwritable_output_is_exit_1(sample_site: Path) -> None:
    code, _, err, _ = run("render", POST, "-o", str(sample_site / "missing-dir" / "x.html"))
    assert code == 1
    assert err.startswith("error: ") and "missing-dir" in err and "cannot write" in err


def test_bad_format_is_usage_error(sample_site: Path) -> None:
    code, _, err, _ = run("render", POST, "--format", "pdf")
    assert code == 2
    assert "Invalid value for '--format'" in err


def test_render_help() -> None:
    code, out, _, _ = run("render", "--help")
    assert code == 0
    assert "--format [html|text|eml]" in out and "sample recipient" in out


def test_a_post_that_failed_to_load_says_why_by_any_reference(sample_site: Path) -> None:
    """`render broken` (its id), its stem or its path without the extension
    names the file that failed: the reason is shown, not "no post matches"."""
    (sample_site / "posts" / "news").mkdir()
    (sample_site / "posts" / "news" / "2024-05-01-broken.md").write_text(
        '---\ntitle: "unclosed\n---\nx\n', encoding="utf-8"
    )
    for ref in (
        "news/broken",
        "news/2024-05-01-broken",
        "posts/news/2024-05-01-broken",
        "posts/news/2024-05-01-broken.md",
    ):
        code, out, err, _ = run("render", ref)
        assert code == 1, ref
        assert err.startswith("error: posts/news/2024-05-01-broken.md:2: invalid YAML"), (ref, err)
        assert err.count("\n") == 1 and out == ""
    code, _, err, _ = run("render", "broken")  # a bare slug is no reference (docs/posts.md)
    assert err.startswith("error: no post matches 'broken'")


def test_send_names_why_a_broken_post_failed(sample_site: Path) -> None:
    (sample_site / "posts" / "2024-05-01-broken.md").write_text(
        "---\ntitle: x\ndate: 2024-13-45\n---\nx\n", encoding="utf-8"
    )
    code, _, err, _ = run("send", "broken", "--list", "sample", "--dry-run")
    assert code == 1
    assert err.startswith("error: posts/2024-05-01-broken.md:3: date: ") and "date" in err, err
