"""What the reader sees: footer compliance, language, preheader, images, Outlook markup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bigpng import write_png
from click.testing import CliRunner
from PIL import Image
from test_render_support import make_post, make_settings, parse

from newsletter.cli import main
from newsletter.config import Settings, SiteSettings, load_settings
from newsletter.email.headers import list_id
from newsletter.email.message import MessageTemplate, Recipient
from newsletter.email.render import PLACEHOLDERS, render_digest, render_email, template_environment

ADDRESS = "Tide Notes, 12 Harbour Road, Example Bay 00000"


@pytest.fixture(autouse=True)
def _fresh_environments() -> Iterator[None]:
    template_environment.cache_clear()
    yield
    template_environment.cache_clear()


def settings_with(**email_kw: object) -> Settings:
    return make_settings(**email_kw)


def render(settings: Settings, **post_kw: object) -> tuple[str, str, str]:
    out = render_email(make_post(**post_kw), settings, settings.lists["everything"])
    return out.subject, out.html, out.text


def digest(settings: Settings) -> tuple[str, str]:
    posts = [
        make_post(),
        make_post("A short second post about sand fleas.", post_id="fleas", title="Sand Fleas",
                  title_html="Sand Fleas", date=make_post().date.replace(day=15), image=None,
                  authors=()),
    ]  # fmt: skip
    out = render_digest(posts, settings, settings.lists["weekly"])
    return out.html, out.text


# --------------------------------------------------------------------------- footer


def test_the_postal_address_is_in_every_footer() -> None:
    settings = settings_with(postal_address=ADDRESS)
    _, html, text = render(settings)
    d_html, d_text = digest(settings)
    for part in (html, d_html):
        footer = part[part.index('class="footer"') :]
        assert 'class="postal-address"' in footer and ADDRESS in footer
    for part in (text, d_text):
        assert part.rstrip().endswith(ADDRESS)
    assert ADDRESS not in render(settings_with())[1]


def test_check_warns_when_smtp_has_no_postal_address(sample_site: Path) -> None:
    config = sample_site / "newsletter.toml"
    text = config.read_text().replace('transport = "maildir"', 'transport = "smtp"')
    config.write_text(re.sub(r"(?m)^postal_address = .*\n", "", text))
    result = CliRunner(env={"NEWSLETTER_SMTP_PASSWORD": "x"}).invoke(main, ["check"])
    assert "email.postal_address: warning: no postal address" in result.output
    config.write_text(
        config.read_text().replace("[email]\n", f'[email]\npostal_address = "{ADDRESS}"\n')
    )
    result = CliRunner(env={"NEWSLETTER_SMTP_PASSWORD": "x"}).invoke(main, ["check"])
    assert "postal address" not in result.output


def test_the_manage_link_sits_beside_unsubscribe_when_enabled() -> None:
    alice = Recipient(
        "alice@example.com",
        "Alice",
        "https://news.tides.example.com/unsubscribe/TOK",
        "https://news.tides.example.com/preferences/TOK",
    )
    for enabled in (False, True):
        settings = settings_with(preferences_link=enabled)
        rendered = render_email(make_post(), settings, settings.lists["everything"])
        msg = parse(MessageTemplate.build(rendered, settings).personalise(alice))
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = "https://news.tides.example.com/preferences/TOK"
        assert (
            link in html and re.search(rf"Manage your subscription:\s+<{link}>", text) is not None
        ) == enabled
        assert PLACEHOLDERS["preferences_url"] not in html + text
        if enabled:
            assert re.search(
                rf'href="{link}"[^>]*>Manage your subscription</a> · <a href="https://news.tides.example.com/unsubscribe/TOK"',
                html,
            )


def test_list_id_quotes_a_title_that_is_not_plain_words() -> None:
    settings = replace(
        make_settings(),
        lists={
            "all": replace(
                make_settings().lists["everything"], name="all", title="Field Notes (every post)"
            )
        },
    )
    assert list_id(settings, "all") == '"Field Notes (every post)" <all.tides.example.com>'
    plain = replace(settings, lists={"all": replace(settings.lists["all"], title="Field Notes")})
    assert list_id(plain, "all") == "Field Notes <all.tides.example.com>"


# --------------------------------------------------------------------------- language


def test_lang_and_dir_come_from_the_site(tmp_path: Path) -> None:
    for lang, direction in (("en", "ltr"), ("tr", "ltr"), ("ar", "rtl"), ("he-IL", "rtl")):
        settings = replace(make_settings(), site=replace(make_settings().site, lang=lang))
        _, html, _ = render(settings)
        assert f'<html lang="{lang}" dir="{direction}"' in html
        assert f'<td class="content" dir="{direction}"' in html  # Gmail drops <html> attributes
    (tmp_path / "_config.yml").write_text("title: Notes\nlang: pt-BR\n")
    (tmp_path / "newsletter.toml").write_text('[site]\njekyll_config = "_config.yml"\n')
    assert load_settings(tmp_path / "newsletter.toml").site.lang == "pt-BR"
    (tmp_path / "_config.yml").write_text("title: Notes\nlocale: fa_IR\n")
    assert load_settings(tmp_path / "newsletter.toml").site.lang == "fa-IR"


def test_a_posts_own_lang_wins_over_the_sites() -> None:
    """One list per language (categories) on an English site: an Arabic post
    went out as lang="en" dir="ltr", laid out and read aloud as English."""
    settings = make_settings()
    _, html, _ = render(settings, extra={"lang": "ar"})
    assert '<html lang="ar" dir="rtl"' in html
    assert '<td class="content" dir="rtl"' in html
    _, html, _ = render(settings, extra={"lang": "pt-BR"})
    assert '<html lang="pt-BR" dir="ltr"' in html
    for bad in ("../../x", 42, "", None):  # not a language tag: the site's
        _, html, _ = render(settings, extra={"lang": bad})
        assert '<html lang="en" dir="ltr"' in html


def test_a_digest_of_posts_in_one_language_takes_it() -> None:
    settings = make_settings()
    lst = settings.lists["everything"]
    arabic = [make_post(extra={"lang": "ar"}), make_post(post_id="b", extra={"lang": "ar"})]
    html = render_digest(arabic, settings, lst, cache=False).html
    assert '<html lang="ar" dir="rtl"' in html
    mixed = [make_post(extra={"lang": "ar"}), make_post(post_id="b")]
    html = render_digest(mixed, settings, lst, cache=False).html
    assert '<html lang="en" dir="ltr"' in html


# --------------------------------------------------------------------------- preheader


def preheader_of(html: str) -> str:
    match = re.search(
        r'<div class="preheader"[^>]*>(.*?)&#847;|<div class="preheader"[^>]*>(.*?)\u034f',
        html,
        re.S,
    )
    assert match is not None
    return (match.group(1) or match.group(2)).strip()


def test_a_description_that_repeats_the_title_is_neither_subtitle_nor_preheader() -> None:
    settings = make_settings()
    # The seed post's shape: the description starts with the title.
    subject, html, text = render(
        settings, description="Counting Life in Tide Pools: notes from one Saturday"
    )
    assert 'class="subtitle"' not in html
    assert "notes from one Saturday" not in text
    pre = preheader_of(html)
    assert pre.startswith("Tide pools are small laboratories")
    assert subject.lower() not in pre.lower()


def test_a_fresh_description_is_the_subtitle_and_the_preheader() -> None:
    _, html, _ = render(make_settings())
    assert '<p class="subtitle"' in html
    assert preheader_of(html) == "One Saturday, three rock pools and a notebook"


def test_the_preheader_is_prose_without_image_alts_or_urls() -> None:
    """The inbox preview came from the text part: "[A shore crab] Crabs walk
    sideways (https://…)" — bracketed alt text and raw URLs."""
    body = (
        "![A shore crab](https://tides.example.com/images/crab.jpg)\n\n"
        "Crabs walk [sideways](https://example.org/crabs) on the shore. More.\n\n"
        "<!--more-->\n\nRest."
    )
    _, html, text = render(make_settings(), body_md=body, description=None)
    assert preheader_of(html) == "Crabs walk sideways on the shore."
    assert "sideways <https://example.org/crabs>" in text  # the text part keeps them
    only_image = "![A shore crab](https://tides.example.com/images/crab.jpg)\n\n<!--more-->\n"
    _, html, _ = render(make_settings(), body_md=only_image, description=None)
    assert 'class="preheader"' not in html or "[A shore crab]" not in html


@pytest.mark.parametrize(
    ("title", "width"),
    [
        ("A " + "very long title that keeps going " * 9, 0),  # 300 characters
        ("日本語のタイトル", 16),  # wide characters take two columns
        ("Counting Life in Tide Pools", 27),
    ],
)
def test_the_text_title_is_wrapped_and_underlined_to_its_width(title: str, width: int) -> None:
    """A 300-character title was one 300-column line over 300 '='; a CJK
    title's underline was half as wide as the title."""
    _, _, text = render(make_settings(), title=title, title_html=title)
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line and set(line) == {"="})
    start = lines.index("", 0) + 1  # the title follows the masthead's blank line
    heading = lines[start:rule]
    assert " ".join(heading) == " ".join(title.split())
    assert all(len(line) <= 72 for line in heading)
    assert len(lines[rule]) == (width or max(len(line) for line in heading))


def test_the_footer_starts_with_the_signature_separator() -> None:
    """RFC 3676 §4.3: "-- " (with its space) marks the signature, so mail
    clients leave it out of a reply's quote; "--" quoted the reader's own
    unsubscribe link into every reply to the editor."""
    _, _, text = render(make_settings())
    _, digest_text = digest(make_settings())
    for part in (text, digest_text):
        lines = part.splitlines()
        assert lines[lines.index("-- ") + 1].startswith("You are receiving this")
        assert "--" not in lines


def test_a_description_with_markup_and_entities_reads_as_plain_text() -> None:
    """front matter `description` went out raw: "&amp;amp; &lt;b&gt;" in the
    HTML, "*tiny* &amp; <b>bold</b>" in the text part and the preheader."""
    description = "A *tiny* &amp; <b>bold</b> [link](https://example.org) experiment"
    _, html, text = render(make_settings(), description=description)
    plain = "A tiny & bold link experiment"
    assert plain in text.splitlines()
    assert preheader_of(html) == "A tiny &amp; bold link experiment"
    subtitle = re.search(r'<p class="subtitle"[^>]*>(.*?)</p>', html, re.S)
    assert subtitle is not None and subtitle.group(1) == "A tiny &amp; bold link experiment"


# --------------------------------------------------------------------------- images


@pytest.fixture
def site_with_images(tmp_path: Path) -> Settings:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (2000, 1000), "teal").save(tmp_path / "images" / "big.png")
    Image.new("RGB", (300, 200), "navy").save(tmp_path / "images" / "small.jpg")
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    base = make_settings()
    return replace(base, site=SiteSettings(title="Tide Notes", url="https://tides.example.com",
                                          source_dir=tmp_path, posts_dir=tmp_path / "_posts"))  # fmt: skip


def img_tags(html: str) -> dict[str, str]:
    return {re.search(r'src="([^"]+)"', t).group(1): t for t in re.findall(r"<img\b[^>]*>", html)}  # type: ignore[union-attr]


def test_local_images_get_their_size_capped_at_the_content_width(
    site_with_images: Settings,
) -> None:
    body = (
        "Intro.\n\n![A big one](/images/big.png)\n\n![Small](/images/small.jpg)\n\n"
        "![Remote](https://cdn.example.net/x.png)\n\n![Broken](/images/broken.png)\n\n"
        "![Escape](/images/../../../etc/passwd)\n"
    )
    settings = replace(site_with_images, email=replace(site_with_images.email, content="full"))
    _, html, _ = render(settings, body_md=body, image="https://tides.example.com/images/big.png")
    tags = img_tags(html)
    hero = next(t for t in re.findall(r"<img\b[^>]*>", html) if "hero-img" in t)
    assert 'width="600" height="300"' in hero
    big = [t for t in re.findall(r"<img\b[^>]*>", html) if "big.png" in t and "hero-img" not in t]
    assert big and 'width="536" height="268"' in big[0]
    assert 'width="300" height="200"' in tags["https://tides.example.com/images/small.jpg"]
    assert "width=" not in tags["https://cdn.example.net/x.png"]  # not ours: left as written
    assert "width=" not in tags["https://tides.example.com/images/broken.png"]
    assert "width=" not in next(t for s, t in tags.items() if "passwd" in s)


@pytest.mark.parametrize("side", [20000, 10000])
def test_an_image_too_big_for_pillow_is_of_unknown_size(
    site_with_images: Settings, tmp_path: Path, side: int, recwarn: pytest.WarningsRecorder
) -> None:
    """A valid 20000×20000 PNG (48 KB on disk) made Pillow raise
    DecompressionBombError from its header alone, which is no OSError: the
    render, and with it `run`, `render` and `send`, died with a traceback.
    10000×10000 only warns (Pillow raises past twice its limit).  Both are
    now of unknown size, as a remote image; Pillow's limit stays as it was."""
    limit = Image.MAX_IMAGE_PIXELS
    write_png(tmp_path / "images" / "panorama.png", side, side)  # the site's source
    url = "https://tides.example.com/images/panorama.png"
    settings = replace(site_with_images, email=replace(site_with_images.email, content="full"))
    _, html, _ = render(settings, body_md=f"Intro.\n\n![The bay]({url})\n", image=url)
    hero = next(t for t in re.findall(r"<img\b[^>]*>", html) if "hero-img" in t)
    assert 'width="600"' in hero and "height=" not in hero  # as a remote hero image
    body = next(t for t in re.findall(r"<img\b[^>]*>", html) if "The bay" in t)
    assert "width=" not in body and "height=" not in body
    assert limit == Image.MAX_IMAGE_PIXELS
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_every_image_of_the_theme_has_a_width_for_outlook(site_with_images: Settings) -> None:
    settings = replace(
        site_with_images, email=replace(site_with_images.email, logo="/images/small.jpg")
    )
    _, html, _ = render(settings)
    d_html, _ = digest(settings)
    for part in (html, d_html):
        for tag in re.findall(r"<img\b[^>]*>", part):
            if "post-body" in tag:
                continue
            assert re.search(r'\bwidth="\d+"', tag), tag
    logo = next(t for t in re.findall(r"<img\b[^>]*>", html) if 'class="logo"' in t)
    assert 'src="https://tides.example.com/images/small.jpg"' in logo
    assert 'width="200" height="133"' in logo and 'alt="Tide Notes"' in logo


@pytest.mark.parametrize(
    ("logo", "src"),
    [
        ("//cdn.example.net/logo.png", "https://cdn.example.net/logo.png"),
        ("images/logo.png", "https://tides.example.com/images/logo.png"),
        ("HTTPS://CDN.example.net/Logo.png", "HTTPS://CDN.example.net/Logo.png"),
    ],
)
def test_the_logo_url_is_absolute(logo: str, src: str) -> None:
    """A protocol-relative logo became https://site/cdn.example.net/logo.png."""
    base = make_settings()
    _, html, _ = render(replace(base, email=replace(base.email, logo=logo)))
    tag = next(t for t in re.findall(r"<img\b[^>]*>", html) if 'class="logo"' in t)
    assert f'src="{src}"' in tag


def test_a_titled_image_gets_a_caption(site_with_images: Settings) -> None:
    settings = replace(site_with_images, email=replace(site_with_images.email, content="full"))
    _, html, _ = render(settings, body_md='![A crab](/images/small.jpg "A shore crab, 4 cm")\n')
    assert re.search(r'<td class="caption"[^>]*>A shore crab, 4 cm</td>', html)


def test_the_lead_image_alt_is_its_own_not_the_title() -> None:
    settings = make_settings()
    _, html, _ = render(settings, image_alt="Counting Life in Tide Pools")  # the fallback
    hero = next(t for t in re.findall(r"<img\b[^>]*>", html) if "hero-img" in t)
    assert 'alt=""' in hero
    _, html, _ = render(settings, image_alt="A tide pool at dawn")
    assert 'alt="A tide pool at dawn"' in html
    # Images off: the alt text is styled like the text around it.
    hero = next(t for t in re.findall(r"<img\b[^>]*>", html) if "hero-img" in t)
    assert "font-family:Helvetica" in hero and "color:#52606d" in hero


# --------------------------------------------------------------------------- Outlook


def test_outlook_markup_bulletproof_button_no_time_element() -> None:
    _, html, _ = render(make_settings())
    d_html, _ = digest(make_settings())
    for part in (html, d_html):
        assert "<time" not in part
    assert "<!--[if mso]>\n<v:roundrect" in html and 'fillcolor="#b44d12"' in html
    cell = re.search(r'<td class="button-cell"[^>]*>', html)
    assert cell is not None and "padding:12px 24px" in cell.group(0)
    button = re.search(r'<a class="button"[^>]*>', html)
    assert button is not None and "padding" not in button.group(0)


def test_reading_time_and_the_digest_headline() -> None:
    words = " ".join(["word"] * 1150)
    settings = replace(make_settings(), email=replace(make_settings().email, content="full"))
    _, html, text = render(settings, body_md=words)
    assert "5 min read" in html and "5 min read" in text
    d_html, d_text = digest(make_settings())
    assert '<h1 class="title"' in d_html and "Tide Notes weekly</h1>" in d_html
    assert "2 new posts · 8–15 June 2024" in d_html
    assert d_html.count('class="digest-item"') == 2
    assert re.search(r'<table role="presentation" class="digest-item"', d_html)
    assert "Tide Notes weekly: 2 new posts · 8–15 June 2024" in d_text
