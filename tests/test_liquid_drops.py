"""Liquid that reads other posts or files, on its own (test_jekyll_chronicle.py
checks the same features against Debian's jekyll): bad input costs one
warning naming the file and line, never a post; an excerpt renders only when
read, once per load; the post index notices what these read change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from newsletter.config import load_settings
from newsletter.posts import Post, PostCollection, building, load_posts
from newsletter.posts import index as post_index

OLD = 1_600_000_000  # files this old are trusted by size and mtime alone


def _write(path: Path, text: str, age: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    stamp = OLD + age + len(text)
    os.utime(path, (stamp, stamp))
    return path


def _site(root: Path, posts: dict[str, str]) -> Path:
    _write(root / "_config.yml", "title: Site\nurl: https://example.com\n")
    _write(root / "newsletter.toml", '[site]\njekyll_config = "_config.yml"\n')
    for name, text in posts.items():
        _write(root / name, text)
    return root / "newsletter.toml"


def _load(config: Path, **kwargs: object) -> PostCollection:
    return load_posts(load_settings(config), **kwargs)  # type: ignore[arg-type]


def _by_slug(loaded: PostCollection) -> dict[str, Post]:
    return {p.slug: p for p in loaded.posts}


def _messages(loaded: PostCollection) -> list[str]:
    return [str(p) for p in loaded.problems]


def post(title: str, body: str) -> str:
    return f"---\ntitle: {title}\n---\n{body}"


def test_include_relative_reads_beside_the_post_and_nothing_else(tmp_path: Path) -> None:
    outside = _write(tmp_path.parent / "secret.md", "SECRET")
    (tmp_path / "_posts").mkdir()
    (tmp_path / "_posts" / "_inc").mkdir()
    (tmp_path / "_posts" / "_inc" / "escape.md").symlink_to(outside)
    body = (
        "Intro.\n\n"
        "{% include_relative _inc/box.md word='kept' %}\n\n"  # line 6
        "{% include_relative _inc/missing.md %}\n\n"  # line 8
        "{% include_relative ../secret.md %}\n\n"  # line 10
        "{% include_relative _inc/escape.md %}\n\n"  # line 12
        "End.\n"
    )
    config = _site(
        tmp_path,
        {
            "_posts/2024-01-01-a.md": post("A", body),
            "_posts/_inc/box.md": "Boxed *{{ include.word }}* in {{ page.title }}.\n",
            "_posts/2024-01-02-b.md": post("B", "Fine.\n"),
        },
    )
    loaded = _load(config, index=False)
    posts = _by_slug(loaded)
    assert "Boxed <em>kept</em> in A." in posts["a"].body_html
    assert "SECRET" not in posts["a"].body_html and "End." in posts["a"].body_html
    assert "Fine." in posts["b"].body_html  # the other post goes on
    path = tmp_path / "_posts" / "2024-01-01-a.md"
    assert _messages(loaded) == [
        f"{path}:8: warning: {{% include_relative _inc/missing.md %}} dropped "
        "(no such file in _posts/)",
        f"{path}:10: warning: {{% include_relative ../secret.md %}} dropped "
        "(a name with '..', './' or '//' or other characters Jekyll refuses)",
        f"{path}:12: warning: {{% include_relative _inc/escape.md %}} dropped (outside the site)",
    ]


def test_a_broken_data_file_is_one_warning_with_its_line(tmp_path: Path) -> None:
    config = _site(
        tmp_path,
        {
            "_data/releases.yml": "- version: 1\n- version: [2\n  name: x\n",
            "_data/team.json": '{"lead": "Ada"}',
            "_posts/2024-01-01-a.md": post(
                "A", "Team: {{ site.data.team.lead }}.\n\n"
                "{% for r in site.data.releases %}v{{ r.version }} {% endfor %}None.\n"
            ),
        },
    )  # fmt: skip
    loaded = _load(config, index=False)
    assert "Team: Ada." in loaded.posts[0].body_html
    assert "None." in loaded.posts[0].body_html
    data = tmp_path / "_data" / "releases.yml"
    assert [m for m in _messages(loaded) if "data file" in m] == [
        f"{data}:3: warning: data file ignored: while parsing a flow sequence "
        "expected ',' or ']', but got ':'"
    ]


def test_an_excerpt_renders_only_when_read_and_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = building.excerpt_for_liquid

    def counting(source: object, site: building.SiteContext) -> str:
        calls.append(source.site_rel)  # type: ignore[attr-defined]
        return real(source, site)  # type: ignore[arg-type]

    monkeypatch.setattr(building, "excerpt_for_liquid", counting)
    posts = {
        f"_posts/2024-01-0{i}-p{i}.md": post(f"P{i}", f"Para {i}.\n\nMore {i}.\n")
        for i in range(1, 6)
    }
    posts["_posts/2024-01-03-p3.md"] = post("P3", "Three. Next: {{ page.next.title }}.\n")
    config = _site(tmp_path, posts)
    loaded = _load(config, index=False)
    assert "Next: P4." in _by_slug(loaded)["p3"].body_html
    assert calls == []  # neighbours come from the front matter already read
    listing = (
        "{% for p in site.posts limit:2 %}[{{ p.excerpt | strip_html | strip }}]{% endfor %}\n"
    )
    _write(tmp_path / "_posts/2024-01-01-p1.md", post("P1", "One.\n\n" + listing))
    _write(tmp_path / "_posts/2024-01-02-p2.md", post("P2", "Two.\n\n" + listing))
    loaded = _load(config, index=False)
    assert "[Para 5.][Para 4.]" in _by_slug(loaded)["p1"].body_html
    assert "[Para 5.][Para 4.]" in _by_slug(loaded)["p2"].body_html
    assert sorted(calls) == ["_posts/2024-01-04-p4.md", "_posts/2024-01-05-p5.md"]


def test_an_excerpt_that_reads_excerpts_ends(tmp_path: Path) -> None:
    """Jekyll overflows its stack here; we show an empty excerpt where it loops."""
    loop = "Lead {% for p in site.posts %}({{ p.excerpt | strip_html | strip }}){% endfor %}\n"
    config = _site(
        tmp_path,
        {
            "_posts/2024-01-01-a.md": post("A", loop + "\nA body.\n"),
            "_posts/2024-01-02-b.md": post("B", "Self: {{ page.excerpt }}\n\nB body.\n"),
        },
    )
    loaded = _load(config, index=False)
    posts = _by_slug(loaded)
    assert "A body." in posts["a"].body_html and "B body." in posts["b"].body_html
    assert loaded.problems == () or all(p.severity == "warning" for p in loaded.problems)


@pytest.mark.parametrize("bodies", [True, "lazy"])
def test_the_index_sees_a_new_neighbour_and_an_included_file(
    tmp_path: Path, bodies: bool | str
) -> None:
    """Neither post file changed: a newer post (its `page.next`) and the file it
    includes did.  The index, the whole load kept on disk and the one kept in
    the process all notice."""
    config = _site(
        tmp_path,
        {
            "_posts/2024-01-01-a.md": post(
                "A", "Next: {{ page.next.title | default: 'none' }}.\n\n"
                "{% include_relative _inc/note.md %}\n"
            ),
            "_posts/_inc/note.md": "Note one.\n",
        },
    )  # fmt: skip

    def body(new_process: bool) -> str:
        if new_process:
            post_index.forget()
        loaded = _load(config, bodies=bodies)
        found = loaded.find("a") if bodies == "lazy" else _by_slug(loaded)["a"]
        assert found is not None
        return found.body_html

    first = body(True)
    assert "Next: none." in first and "Note one." in first
    _write(tmp_path / "_posts/2024-02-01-b.md", post("B", "Newer.\n"))
    assert "Next: B." in body(False)
    _write(tmp_path / "_posts/_inc/note.md", "Note two!\n", age=5)
    assert "Note two!" in body(False)
    _write(tmp_path / "_posts/_inc/note.md", "Note three\n", age=9)
    assert "Note three" in body(True)


def test_content_is_rendered_for_older_posts_only(tmp_path: Path) -> None:
    """As Jekyll, which renders posts oldest first: an older post's content
    is its HTML; the post's own and a newer one's are still as written."""
    newest = (
        "*{{ page.title }}*\n\n"
        "{% for p in site.posts offset:1 %}[{{ p.title }}: {{ p.content | strip }}]\n{% endfor %}\n"
        "Own: {{ page.content | size }}\n"
    )
    config = _site(
        tmp_path,
        {
            "_posts/2024-01-01-a.md": post("A", "*{{ page.title }}* one.\n\n"
                                       "Newest: {{ site.posts.first.content | size }}\n"),
            "_posts/2024-01-02-b.md": post("B", "*{{ page.title }}* two.\n"),
            "_posts/2024-01-03-c.md": post("C", newest),
        },
    )  # fmt: skip
    posts = _by_slug(_load(config, index=False))
    assert "<em>B</em> two.</p>]" in posts["c"].body_html  # rendered
    assert "[A: <p><em>A</em> one.</p>" in posts["c"].body_html
    assert f"Own: {len(newest)}" in posts["c"].body_html  # its own: as written
    assert f"Newest: {len(newest)}" in posts["a"].body_html  # a newer one: as written


def test_a_shared_excerpt_s_included_file_is_seen_by_every_post_reading_it(
    tmp_path: Path,
) -> None:
    """Two posts read B's excerpt (rendered once per load, for the first of
    them); B's excerpt includes a file.  When that file changes, both re-render."""
    reader = "{% for p in site.posts %}{% if p.title == 'B' %}[{{ p.excerpt | strip_html | strip }}]{% endif %}{% endfor %}\n"
    config = _site(
        tmp_path,
        {
            "_posts/2024-01-01-a.md": post("A", reader),
            "_posts/2024-01-02-b.md": post("B", "{% include_relative _inc/n.md %}\n"),
            "_posts/2024-01-03-c.md": post("C", reader),
            "_posts/_inc/n.md": "One",
        },
    )

    def bodies(new_process: bool) -> list[str]:
        if new_process:
            post_index.forget()
        found = _by_slug(_load(config))
        return [found["a"].body_html, found["c"].body_html]

    assert bodies(True) == ["<p>[One]</p>", "<p>[One]</p>"]
    _write(tmp_path / "_posts/_inc/n.md", "Two!", age=5)
    assert bodies(False) == ["<p>[Two!]</p>", "<p>[Two!]</p>"]
    _write(tmp_path / "_posts/_inc/n.md", "Three", age=9)
    assert bodies(True) == ["<p>[Three]</p>", "<p>[Three]</p>"]
