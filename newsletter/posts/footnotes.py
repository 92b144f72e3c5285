"""Footnotes as kramdown shows them (Jekyll's Markdown), on python-markdown's HTML.

python-markdown lists every footnote *defined*, numbered in definition order;
kramdown lists only the footnotes *referenced*, numbered in the order the text
first refers to them, and marks a note's second and later back-links with
their number (`↩²`).  The difference shows most in an excerpt: Jekyll appends
the post's footnote definitions to it, so an excerpt that is only an image
printed "1. The note." under it.
"""

from __future__ import annotations

import lxml.etree
from lxml.html import HtmlElement

__all__ = ["as_kramdown"]


def as_kramdown(root: HtmlElement) -> None:
    """Drop unreferenced notes, renumber and reorder the rest (in place)."""
    for box in [el for el in root.iter("div") if _has_class(el, "footnote")]:
        _one_list(root, box)


def _one_list(root: HtmlElement, box: HtmlElement) -> None:
    ol = box.find("ol")
    if ol is None:
        return
    items = [li for li in ol if li.tag == "li"]
    notes = {li.get("id", "")[3:]: li for li in items if li.get("id", "").startswith("fn:")}
    if not notes or len(notes) != len(items):
        return  # not python-markdown's list (an HTML post's own): as written
    refs = [
        a
        for a in root.iter("a")
        if _has_class(a, "footnote-ref") and _note_id(a.get("href", "")) in notes
    ]
    order: list[str] = []
    for a in refs:
        name = _note_id(a.get("href", ""))
        if name not in order:
            order.append(name)
        a.text = str(order.index(name) + 1)
    if not order:
        _drop(box)
        return
    for li in list(ol):
        ol.remove(li)
    for number, name in enumerate(order, start=1):
        li = notes[name]
        _renumber_backlinks(li, number)
        ol.append(li)


def _note_id(href: str) -> str:
    """`…#fn:x` → `x` (the href is absolute by now, or still `#fn:x`)."""
    _, _, fragment = href.rpartition("#")
    return fragment[3:] if fragment.startswith("fn:") else ""


def _renumber_backlinks(li: HtmlElement, number: int) -> None:
    backs = [a for a in li.iter("a") if _has_class(a, "footnote-backref")]
    for count, a in enumerate(backs, start=1):
        if a.get("title"):
            a.set("title", f"Jump back to footnote {number} in the text")
        if count > 1:  # kramdown: ↩, ↩², ↩³ …
            for old in a.findall("sup"):
                a.remove(old)
            sup = lxml.etree.SubElement(a, "sup")
            sup.text = str(count)


def _has_class(el: HtmlElement, name: str) -> bool:
    return name in (el.get("class") or "").split()


def _drop(el: HtmlElement) -> None:
    parent = el.getparent()
    if parent is None:
        return
    prev = el.getprevious()
    if el.tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)
