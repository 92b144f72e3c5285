"""Liquid in posts: Jekyll's tags and filters, unknown ones dropped with a warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter.config import Settings, SiteSettings
from newsletter.posts import liquid
from newsletter.posts.collection import load_posts

SITE = {"url": "https://example.com", "baseurl": "/blog", "title": "Example Notes"}
PAGE = {"title": "A Page", "url": "/2024/01/01/a.html", "tags": ["x", "y"]}


def _render(text: str, first_line: int = 1) -> liquid.LiquidResult:
    urls = {"2024-01-01-a": "https://example.com/blog/2024/01/01/a.html"}
    return liquid.render(
        text,
        site=SITE,
        page=PAGE,
        post_url=urls.get,
        link=lambda t: urls.get(t.rsplit("/", 1)[-1].removesuffix(".md")),
        first_line=first_line,
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "{{ site.url }}{{ site.baseurl }} {{ site.title }}",
            "https://example.com/blog Example Notes",
        ),
        ("{{ page.title }} {{ page.url }}", "A Page /2024/01/01/a.html"),
        ("{{ '/img/x.png' | relative_url }}", "/blog/img/x.png"),
        # escaped as Jekyll's Addressable normalize does (checked with ruby -rjekyll):
        ("{{ '/café/x y.pdf?q=a b#f' | relative_url }}", "/blog/caf%C3%A9/x%20y.pdf?q=a%20b#f"),
        ("{{ 'x%20y' | absolute_url }}", "https://example.com/blog/x%20y"),
        ("{{ '/a[1]' | relative_url }}", "/blog/a%5B1%5D"),
        ("{{ 'img/x.png' | absolute_url }}", "https://example.com/blog/img/x.png"),
        ("{{ 'https://example.org/y' | absolute_url }}", "https://example.org/y"),
        ("{% raw %}{{ kept }} {% if %}{% endraw %}", "{{ kept }} {% if %}"),
        ("a{% comment %} hidden {% youtube x %} {% endcomment %}b", "ab"),
        # Numbered lines, as Jekyll's Rouge gutter (Pygments' table).
        (
            "{% highlight ruby linenos %}\nputs 1\n{% endhighlight %}",
            '```{ .ruby linenums="1" }\nputs 1\n```',
        ),
        ("Text {% highlight py %}x{% endhighlight %}", "Text \n```py\nx\n```"),
        ("{% highlight py %}x\n{% endhighlight %}", "```py\nx\n```"),
        ("[a]({% post_url 2024-01-01-a %})", "[a](https://example.com/blog/2024/01/01/a.html)"),
        (
            "[a]({% link _posts/2024-01-01-a.md %})",
            "[a](https://example.com/blog/2024/01/01/a.html)",
        ),
        ("{% if page.title %}yes{% else %}no{% endif %}", "yes"),
        ("{% for t in page.tags %}{{ t }},{% endfor %}", "x,y,"),
        ("{% assign n = 'Hello World' | slugify %}{{ n }}", "hello-world"),
        # each of Jekyll's modes, as `ruby -rjekyll` slugifies this text:
        ("{{ 'The _config.yml  Café!' | slugify }}", "the-config-yml-café"),
        ("{{ 'The _config.yml  Café!' | slugify: 'raw' }}", "the-_config.yml-café!"),
        ("{{ 'The _config.yml  Café!' | slugify: 'pretty' }}", "the-_config.yml-café!"),
        ("{{ 'The _config.yml  Café!' | slugify: 'ascii' }}", "the-config-yml-caf"),
        ("{{ 'The _config.yml  Café!' | slugify: 'latin' }}", "the-config-yml-cafe"),
        ("{{ 'The _config.yml  Café!' | slugify: 'none' }}", "the _config.yml  café!"),
        ("{{ page.tags | array_to_sentence_string }}", "x and y"),
        # Ruby's to_json, as `jekyll build` prints it: no spaces.
        ("{{ page.tags | jsonify }}", '["x","y"]'),
        ("{{ '<a&b>' | xml_escape }}", "&lt;a&amp;b&gt;"),
        # Ruby's to_i: text that is no number is 0, never an unreadable post.
        ("{{ 'x' | to_integer }} {{ '12px' | to_integer }} {{ '3.7' | to_integer }}", "0 12 3"),
        ("{{ true | to_integer }} {{ nil | to_integer }} {{ -2.5 | to_integer }}", "1 0 -2"),
        (
            "{{ page.tags | pop: 'x' | join: ',' }} {{ page.tags | shift: '1' | join: ',' }}",
            "x,y y",
        ),
        ("no liquid at all {", "no liquid at all {"),
    ],
)
def test_jekyll_liquid(source: str, expected: str) -> None:
    result = _render(source)
    assert result.text == expected
    assert result.warnings == ()


@pytest.mark.parametrize(
    ("source", "expected", "warning"),
    [
        ("a {% youtube abc %} b", "a  b", "unknown Liquid tag {% youtube %} dropped"),
        ("{% gallery %}x{% endgallery %}", "x", "unknown Liquid tag {% gallery %} dropped"),
        (
            "a {% include note.html param=1 %} b",
            "a  b",
            "{% include note.html %} dropped (not in _includes)",
        ),
        ("a {% include_relative x.md %} b", "a  b", "{% include_relative x.md %} dropped"),
        ("{{ page.title | shout }}", "A Page", "unknown Liquid filter 'shout' ignored"),
        (
            "[x]({% post_url 1999-01-01-none %})",
            f"[x]({liquid.MISSING_LINK})",  # the sanitiser drops the href, keeps "x"
            "{% post_url 1999-01-01-none %}: no such post",
        ),
        ("{% if broken", " if broken", "unterminated Liquid markup '{%' dropped"),
        ("a {{ b", "a  b", "unterminated Liquid markup '{{' dropped"),
    ],
)
def test_unknown_things_are_dropped_with_a_warning(
    source: str, expected: str, warning: str
) -> None:
    result = _render("line one\n" + source, first_line=7)
    assert result.text == "line one\n" + expected
    assert len(result.warnings) == 1
    assert result.warnings[0].message.startswith(warning)
    assert result.warnings[0].line == 8  # the file line, not the body line


def test_broken_liquid_is_stripped_never_fatal() -> None:
    result = _render("keep {% if page.title %} me\n{{ page.title }}")
    assert "{%" not in result.text and "{{" not in result.text
    assert result.text.startswith("keep ") and "me" in result.text
    assert "Liquid error" in result.warnings[0].message


def test_environment_is_cached() -> None:
    assert liquid.environment() is liquid.environment()


def test_posts_never_let_liquid_markers_through(tmp_path: Path) -> None:
    folder = tmp_path / "posts"
    folder.mkdir()
    (folder / "2024-01-01-target.md").write_text("---\ntitle: Target\n---\nHi.\n", encoding="utf-8")
    (folder / "2024-02-02-liquid.md").write_text(
        "---\ntitle: Liquid\ncategories: tech\n---\n"
        "Intro {{ page.title }} on {{ site.title }}, see [t]({% post_url 2024-01-01-target %}).\n\n"
        "{% raw %}{% if %} and {{ x }}{% endraw %}\n\n{% unknown %}\n\n{% if broken\n",
        encoding="utf-8",
    )
    settings = Settings(
        base_dir=tmp_path,
        site=SiteSettings(posts_dir=folder, url="https://example.com", baseurl="/b", title="T"),
    )
    collection = load_posts(settings)
    post = collection.find("liquid")
    for html in (post.body_html, post.excerpt_html):
        assert "{%" not in html and "{{" not in html
    assert post.excerpt_text.startswith(
        "Intro Liquid on T, see t <https://example.com/b/2024/01/01/target.html>"
    )
    assert post.url == "https://example.com/b/tech/2024/02/02/liquid.html"
    # the raw block is shown as written (as HTML character references)
    assert "&#123;% if %}" in post.body_html
    assert any("{% unknown %}" in w or "Liquid" in w for w in post.warnings)
    assert all(p.path == folder / "2024-02-02-liquid.md" for p in collection.problems)


def test_date_filters_work_on_page_date() -> None:
    from datetime import UTC, datetime

    result = liquid.render(
        '{{ page.date | date: "%B %-d, %Y" }} / {{ page.date | date_to_xmlschema }}',
        site=SITE,
        page={"date": datetime(2024, 11, 4, 6, 0, tzinfo=UTC)},
        post_url=lambda _: None,
        link=lambda _: None,
    )
    assert result.text == "November 4, 2024 / 2024-11-04T06:00:00+00:00"


def test_date_to_string_ordinal_and_us_style() -> None:
    """Jekyll's optional arguments (`"ordinal"`, `"US"`); they used to make the
    whole post's Liquid fail ("takes 1 positional argument")."""
    from datetime import UTC, datetime

    days = {d: datetime(2024, 11, d, tzinfo=UTC) for d in (1, 2, 3, 11, 22)}
    template = (
        '{{ d | date_to_string }}|{{ d | date_to_string: "ordinal" }}|'
        '{{ d | date_to_string: "ordinal", "US" }}|{{ d | date_to_long_string: "ordinal", "US" }}'
    )
    seen = {}
    for day, moment in days.items():
        result = liquid.render(
            template.replace("d |", "page.date |"),
            site=SITE,
            page={"date": moment},
            post_url=lambda _: None,
            link=lambda _: None,
        )
        assert result.warnings == ()
        seen[day] = result.text
    assert seen[1] == "01 Nov 2024|1st Nov 2024|Nov 1st, 2024|November 1st, 2024"
    assert seen[2].split("|")[1] == "2nd Nov 2024"
    assert seen[3].split("|")[1] == "3rd Nov 2024"
    assert seen[11].split("|")[1] == "11th Nov 2024"
    assert seen[22].split("|")[2] == "Nov 22nd, 2024"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # `{%- if %}` trims what follows the fence, `-%}` what precedes it:
        # the fence still closes / opens on a line of its own.
        (
            "{% highlight py %}x{% endhighlight %}\n\n{%- if true -%} after {%- endif -%}",
            "```py\nx\n```\nafter",
        ),
        ("{% if true -%}\n{% highlight py %}x\n{% endhighlight %}{% endif %}", "\n```py\nx\n```"),
        ("a {{- '' -}}\n{% highlight py %}x\n{% endhighlight %}", "a\n```py\nx\n```"),
    ],
)
def test_highlight_fences_survive_whitespace_control(source: str, expected: str) -> None:
    assert _render(source).text == expected


def test_a_flood_of_stray_markup_is_capped_and_removed() -> None:
    result = _render("x {% y {{ z " * 3000)
    assert "{%" not in result.text and "{{" not in result.text
    assert len(result.warnings) == liquid.MAX_WARNINGS + 1
    assert result.warnings[-1].message == "… and 5980 more Liquid warnings"


def test_a_python_error_inside_a_filter_is_a_warning_not_an_unreadable_post(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(value: object) -> object:
        raise ValueError("cannot take that")

    real = liquid.environment

    def with_broken(includes: Path | None = None, error_mode: str = "warn") -> object:
        env = real(includes, error_mode)
        env.add_filter("broken", broken)
        return env

    monkeypatch.setattr(liquid, "environment", with_broken)
    monkeypatch.setitem(liquid._JEKYLL_FILTERS, "broken", broken)
    result = _render("Kept {{ 'x' | broken }} text")
    assert result.text == "Kept  text"
    (warning,) = result.warnings
    assert warning.message == "Liquid error, all Liquid markup removed: cannot take that"


def test_a_link_to_no_post_is_no_link_to_the_post_itself(tmp_path: Path) -> None:
    """`[about]({% link about.md %})` with no such post: the words stay, without
    a link (an empty target led to the post itself), and a warning says so."""
    folder = tmp_path / "posts"
    folder.mkdir()
    (folder / "2024-02-02-links.md").write_text(
        "---\ntitle: Links\n---\nSee [about]({% link about.md %}), "
        '<a href="{% post_url 2020-01-01-gone %}">gone</a> and {% link x.md %}.\n',
        encoding="utf-8",
    )
    settings = Settings(
        base_dir=tmp_path, site=SiteSettings(posts_dir=folder, url="https://example.com")
    )
    (post,) = load_posts(settings).posts
    assert post.body_html == "<p>See <a>about</a>, <a>gone</a> and .</p>"
    assert sum("link dropped" in w for w in post.warnings) == 3
    assert any("link about.md %}: no such post, page or file" in w for w in post.warnings)


def test_highlight_in_a_list_item_stays_in_the_item() -> None:
    """The fence keeps the tag's indent: the code block is the item's (as in
    Jekyll), not a block at the margin that ends the list."""
    from newsletter.posts.markup import markdown_to_html

    source = "1. Step:\n\n   {% highlight bash %}\n   make\n   {% endhighlight %}\n\n2. Two"
    text = _render(source).text
    assert text == "1. Step:\n\n   ```bash\n   make\n   ```\n\n2. Two"
    html = markdown_to_html(text, "https://example.com/p.html")
    assert html.count("<ol") == 1 and html.index("<pre") < html.index("Two")


def test_a_date_prints_as_jekyll_prints_it(tmp_path: Path) -> None:
    """`{{ page.date }}` is Ruby's Time#to_s in the site's zone, as `jekyll
    build` prints it (also through jsonify and site.posts)."""
    folder = tmp_path / "posts"
    folder.mkdir()
    (folder / "2024-01-01-d.md").write_text(
        "---\ndate: 2024-01-01 10:00:00 +0300\n---\n"
        "When: {{ page.date }} / {{ page.date | jsonify }} / {{ site.posts.first.date }}"
        ' / {{ page.date | date: "%-d %b" }}\n',
        encoding="utf-8",
    )
    settings = Settings(
        base_dir=tmp_path, site=SiteSettings(posts_dir=folder, url="https://example.com")
    )
    (post,) = load_posts(settings).posts
    assert post.body_html == (
        "<p>When: 2024-01-01 07:00:00 +0000 / \u201c2024-01-01 07:00:00 +0000\u201d"
        " / 2024-01-01 07:00:00 +0000 / 1 Jan</p>"
    )


@pytest.mark.parametrize(
    ("name", "front", "permalink", "expected"),
    [
        # `jekyll build` of each (Jekyll's page.id, not newsletter's post id).
        (
            "2024-03-13-ids.md",
            "id: custom-7\nslug: other-slug\n",
            "/:year/:month/:title/",
            "/2024/03/other-slug 2024-03-13-ids.md .md _posts/2024-03-13-ids.md",
        ),
        (
            "2024-03-14-plain.markdown",
            "",
            "date",
            "/2024/03/14/plain 2024-03-14-plain.markdown .markdown _posts/2024-03-14-plain.markdown",
        ),
        ("2024-03-14-top.md", "", "/:title", "/top 2024-03-14-top.md .md _posts/2024-03-14-top.md"),
    ],
)
def test_page_id_name_ext_and_relative_path_as_jekyll_has_them(
    tmp_path: Path, name: str, front: str, permalink: str, expected: str
) -> None:
    from newsletter.config import load_settings

    (tmp_path / "_config.yml").write_text(f"permalink: {permalink}\n", encoding="utf-8")
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_posts" / name).write_text(
        f"---\ntitle: T\n{front}---\n"
        "{{ page.id }} {{ page.name }} {{ page.ext }} {{ page.relative_path }}\n",
        encoding="utf-8",
    )
    (post,) = load_posts(load_settings(tmp_path / "newsletter.toml"), index=False).posts
    assert post.body_html == f"<p>{expected}</p>"
    assert not post.warnings


@pytest.mark.parametrize(
    ("baseurl", "expected"),
    [
        # `jekyll build` of each: post_url and link print the site-relative
        # URL (with baseurl), so `{{ site.url }}{% post_url %}` is a whole URL.
        (
            "",
            '<a href="https://example.com/2024/01/01/a.html">a</a> '
            '<a href="https://example.com/2024/01/01/a.html">b</a> '
            '<a href="https://example.com/about.html">c</a> /2024/01/01/a.html',
        ),
        (
            "/blog",  # Jekyll 4 doubles a baseurl written before the tag, as here
            '<a href="https://example.com/blog/blog/2024/01/01/a.html">a</a> '
            '<a href="https://example.com/blog/2024/01/01/a.html">b</a> '
            '<a href="https://example.com/blog/about.html">c</a> /blog/2024/01/01/a.html',
        ),
    ],
)
def test_post_url_and_link_print_what_jekyll_prints(
    tmp_path: Path, baseurl: str, expected: str
) -> None:
    from newsletter.config import load_settings

    (tmp_path / "_config.yml").write_text(
        f"url: https://example.com\nbaseurl: '{baseurl}'\n", encoding="utf-8"
    )
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    (tmp_path / "about.md").write_text("---\ntitle: About\n---\nMe.\n", encoding="utf-8")
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_posts" / "2024-01-01-a.md").write_text("---\n---\nA.\n", encoding="utf-8")
    (tmp_path / "_posts" / "2024-01-02-b.md").write_text(
        "---\n---\n[a]({{ site.url }}{{ site.baseurl }}{% post_url 2024-01-01-a %}) "
        "[b]({{ site.url }}{% post_url 2024-01-01-a %}) "
        "[c]({{ site.url }}{% link about.md %}) {% post_url 2024-01-01-a %}\n",
        encoding="utf-8",
    )
    posts = load_posts(load_settings(tmp_path / "newsletter.toml"), index=False).posts
    assert posts[1].body_html == f"<p>{expected}</p>"


def test_ruby_only_date_formats_print_as_jekyll_prints_them(tmp_path: Path) -> None:
    """Ruby's strftime: %s is the epoch of the instant (Python's read the wall
    clock as the machine's), %:z, %L and %N exist; "now" is in the site's zone."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from newsletter.config import load_settings

    (tmp_path / "_config.yml").write_text("timezone: Europe/Istanbul\n", encoding="utf-8")
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_posts" / "2024-03-16-d.md").write_text(
        "---\ndate: 2024-03-16 09:05:07 +0100\n---\n"
        '{{ page.date | date: "%s/%:z/%L/%N/%3N/%%s/%H:%M %z" }} '
        '{{ "now" | date: "%z" }}\n',
        encoding="utf-8",
    )
    (post,) = load_posts(load_settings(tmp_path / "newsletter.toml"), index=False).posts
    now_zone = datetime.now(ZoneInfo("Europe/Istanbul")).strftime("%z")
    # `jekyll build`: 1710576307/+03:00/000/000000000/000/%s/11:05 +0300
    assert post.body_html == (
        f"<p>1710576307/+03:00/000/000000000/000/%s/11:05 +0300 {now_zone}</p>"
    )


def test_an_emails_html_never_carries_liquid_markers(tmp_path: Path) -> None:
    """A `{% raw %}` block in the excerpt: its `{%` and `{{` reached the
    email's HTML as written, in the hidden preheader (plain text, escaped
    for HTML only) and wherever lxml wrote a reference back while the CSS
    was inlined.  In the HTML they are references; the plain text shows them."""
    from newsletter.config import ListSettings
    from newsletter.email.render import render_email

    folder = tmp_path / "posts"
    folder.mkdir()
    (folder / "2024-02-02-raw.md").write_text(
        "---\ntitle: Raw\n---\nWrite {% raw %}{% if %} and {{ x }}{% endraw %} in Liquid.\n",
        encoding="utf-8",
    )
    settings = Settings(
        base_dir=tmp_path, site=SiteSettings(posts_dir=folder, url="https://example.com", title="T")
    )
    post = load_posts(settings).find("raw")
    email = render_email(post, settings, ListSettings(name="all", title="All"))
    assert "{%" not in email.html and "{{" not in email.html
    assert (
        email.html.count("Write &#123;% if %} and &#123;{ x }} in Liquid.") >= 2
    )  # preheader, excerpt
    assert "Write {% if %} and {{ x }} in Liquid." in email.text
    assert "{" in email.html.split("<style", 1)[1].split("</style>", 1)[0]  # the CSS as it was
