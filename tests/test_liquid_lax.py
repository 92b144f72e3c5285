"""An output statement that Liquid's strict parser refuses — another template
language's code shown without `{% raw %}` (`{{ .Name }}`, `{{#each items}}`,
`{{ a if b else c }}`) — costs only itself, as in Jekyll: with its default
`liquid: error_mode: warn` Jekyll warns and parses it laxly (Ruby Liquid's
`Variable#lax_parse`), and the post's other Liquid renders.  `strict` fails the
build; `lax` says nothing.  Every expected text below is what `jekyll build`
(Debian's 4.3, liquid 5.4) printed for the same source; the fixture site
tests/fixtures/jekyll/codeblog checks whole posts against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.errors import PostError
from newsletter.posts import liquid

# Each case renders after these, inside [ ].
ASSIGNS = (
    '{% assign x = "X" %}{% assign y = "Y" %}{% assign flag = "F" %}{% assign Name = "N" %}'
    '{% assign list = "L1,L2" | split: "," %}{% assign k = "y" %}'
)


def _render(
    text: str,
    *,
    includes: Path | None = None,
    liquid_config: dict[str, Any] | None = None,
    first_line: int = 1,
) -> liquid.LiquidResult:
    site: dict[str, Any] = {"title": "Site"}
    if liquid_config is not None:
        site["liquid"] = liquid_config
    return liquid.render(
        text,
        site=site,
        page={"title": "A Page"},
        post_url=lambda _: None,
        link=lambda _: None,
        first_line=first_line,
        includes=includes,
    )


def _includes(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "_includes"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_the_rest_of_the_post_still_renders(tmp_path: Path) -> None:
    """The report: Jekyll prints `A INCLUDED B` and an empty code line."""
    folder = _includes(tmp_path, {"i.html": "INCLUDED\n"})
    text = "A {% include i.html %} B\n\n```\n{{ .Name }}\n```\n"
    result = _render(text, includes=folder, first_line=4)
    assert result.text == "A INCLUDED\n B\n\n```\n\n```\n"
    (warning,) = result.warnings
    assert warning.line == 7
    assert "{{ .Name }}" in warning.message
    assert warning.message.startswith("Liquid syntax error in {{ .Name }}: ")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{{ .Name }}", "N"),  # Go/Helm: the lookup `Name`
        ("{{ $x }}", "X"),
        ("{{#each items}}", ""),  # Handlebars: `each`, then no filter
        ("{{/each}}", ""),
        ("{{> partial}}", ""),  # no name at all: nil
        ("{{ 'a' if b else 'c' }}", "a"),  # Jinja: the first fragment only
        ("{{ 1 + 2 }}", "1"),
        ("{{ 2.5 * 2 }}", "2.5"),
        ("{{ -3 - 1 }}", "-3"),
        ("{{ true && 1 }}", "true"),
        ("{{ nil == 1 }}", ""),
        ("{{ x == y }}", "X"),
        ("{{ !flag }}", "F"),  # `!` is no part of a name
        ("{{ x || y }}", "X"),  # then `| y`: an unknown filter, ignored
        ('{{ .Values.tag | default "latest" }}', ""),  # no `:`: no argument
        ('{{ .Values.tag | default: "latest" }}', "latest"),
        ("{{ page.title | upcase foo }}", "A PAGE"),
        ("{{ page.title | | upcase }}", "A PAGE"),
        ("{{ page.title.. }}", "A Page"),
        ("{{ 'q' page.title }}", "q"),
        ("{{ x | append: y z }}", "XY"),
        ("{{ list.first == 1 }}", "L1"),
        ("{{ list.size * 1 }}", "2"),
        ("{{ x. == 1 }}", "X"),
        ("{{ @x }}", "X"),
        ("{{ (1..3) x }}", "1..3"),
        ("{{ x.y[0] + 1 }}", ""),
        ("{{ [x] == 1 }}", ""),  # the variable named by x's value ("X"): none
        ('{{ x["y"] == 1 }}', ""),
        ("{{ x[k] == 1 }}", ""),
        ("{{ flag? == 1 }}", ""),
        ("{{ a-b.c == 1 }}", ""),
        ("{{ 1abc == 1 }}", ""),
        ("{{ $.a }}", ""),
        ("{{ - }}", ""),
        ("{{ ) }}", ""),
    ],
)
def test_an_expression_strict_parsing_refuses_renders_as_jekyll_renders_it(
    expression: str, expected: str
) -> None:
    result = _render(f"{ASSIGNS}[{expression}]")
    assert result.text == f"[{expected}]"
    # (`{{ x || y }}` is also the usual warning about the unknown filter `y`.)
    warnings = [w for w in result.warnings if "unknown Liquid filter" not in w.message]
    (warning,) = warnings
    assert warning.message.startswith(f"Liquid syntax error in {expression}: ")
    assert warning.line == 1


def test_an_empty_output_is_nothing_and_no_warning() -> None:
    # Ruby Liquid's strict parser takes `{{ }}` as an empty statement.
    assert _render("a{{ }}b{{}}c") == liquid.LiquidResult("abc", ())


def test_an_undefined_name_in_a_lax_expression_is_not_warned_twice() -> None:
    result = _render("one\n{{ .Values.image.tag }} and {{ page.nope }}", first_line=3)
    assert result.text == "one\n and "
    assert [(w.line, w.message.split(":")[0]) for w in result.warnings] == [
        (4, "Liquid syntax error in {{ .Values.image.tag }}"),
        (4, "undefined variable 'page.nope' renders as nothing"),
    ]


def test_each_broken_expression_is_one_warning_with_its_line() -> None:
    result = _render("{{ .A }}\n\n{{ $b }} {{#c}}\n{{ page.title }}")
    assert result.text == "\n\n \nA Page"
    assert [w.line for w in result.warnings] == [1, 3, 3]


def test_an_include_with_a_broken_expression_renders_the_rest_silently(tmp_path: Path) -> None:
    """Jekyll printed `A IN1  IN2 A Page B` and no warning at all."""
    folder = _includes(tmp_path, {"b.html": "IN1 {{ .Broken }} IN2 {{ page.title }}"})
    result = _render("A {% include b.html %} B", includes=folder)
    assert result == liquid.LiquidResult("A IN1  IN2 A Page B", ())


def test_error_mode_lax_renders_the_same_without_a_warning() -> None:
    result = _render("{{ $x }}{{ .Name }}", liquid_config={"error_mode": "lax"})
    assert result == liquid.LiquidResult("", ())


@pytest.mark.parametrize("mode", ["Strict", "quiet"])
def test_any_error_mode_but_warn_and_strict_is_lax_as_in_jekyll(mode: str) -> None:
    # Jekyll hands the value to Liquid as a symbol; Liquid warns only for
    # :warn and raises only for :strict (`error_mode: Strict` built silently).
    assert _render("{{ $x }}", liquid_config={"error_mode": mode}).warnings == ()


def test_error_mode_strict_is_an_error_naming_line_and_expression() -> None:
    with pytest.raises(PostError) as caught:
        _render("ok\n{{ .Name }}", liquid_config={"error_mode": "strict"}, first_line=5)
    assert caught.value.line == 6
    assert "{{ .Name }}" in caught.value.message
    assert "error_mode: strict" in caught.value.message


def test_error_mode_strict_fails_on_a_broken_include_too(tmp_path: Path) -> None:
    # `jekyll build` with error_mode: strict stopped at _includes/b.html.
    folder = _includes(tmp_path, {"b.html": "IN1 {{ .Broken }}"})
    with pytest.raises(PostError) as caught:
        _render("A\n{% include b.html %}", includes=folder, liquid_config={"error_mode": "strict"})
    assert "{{ .Broken }}" in caught.value.message


def test_error_mode_strict_makes_an_unclosed_tag_an_error() -> None:
    # Jekyll fails on it in every mode; newsletter keeps its documented
    # warning (all markup removed) unless the site asked for strict.
    with pytest.raises(PostError):
        _render("{% if x %} open", liquid_config={"error_mode": "strict"})
    warned = _render("{% if x %} open {{ .Name }}")
    assert warned.text == " open "
    assert warned.warnings[0].message.startswith("Liquid error, all Liquid markup removed")


def _site(tmp_path: Path, config: str, body: str) -> Path:
    (tmp_path / "_config.yml").write_text(f"title: T\nurl: https://blog.test\n{config}")
    (tmp_path / "newsletter.toml").write_text(
        '[site]\njekyll_config = "_config.yml"\n\n[lists.main]\ntitle = "All"\n'
    )
    _includes(tmp_path, {"i.html": "INCLUDED"})
    (tmp_path / "_posts").mkdir()
    post = tmp_path / "_posts" / "2024-01-01-p1.md"
    post.write_text(f"---\ntitle: P1\n---\n{body}\n", encoding="utf-8")
    return post


def _check(site: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[dict[str, Any]]]:
    monkeypatch.chdir(site)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["check", "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_check_warns_naming_file_line_and_expression(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    post = _site(tmp_path, "", "A {% include i.html %} B\n\n```\n{{ .Name }}\n```")
    code, problems = _check(tmp_path, monkeypatch)
    found = [p for p in problems if "{{ .Name }}" in p["message"]]
    assert [(p["severity"], Path(p["path"]).name, p["line"]) for p in found] == [
        ("warning", post.name, 7)
    ]
    assert not [p for p in problems if "all Liquid markup removed" in p["message"]]
    assert code == 0


def test_check_fails_with_error_mode_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    post = _site(tmp_path, "liquid:\n  error_mode: strict\n", "A\n\n{{ $x }}")
    code, problems = _check(tmp_path, monkeypatch)
    found = [p for p in problems if "{{ $x }}" in p["message"]]
    assert [(p["severity"], Path(p["path"]).name, p["line"]) for p in found] == [
        ("error", post.name, 6)
    ]
    assert code == 1
