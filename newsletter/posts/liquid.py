"""Liquid in post bodies, the way Jekyll renders it — without ever failing a post.

Jekyll renders a post's Liquid before its Markdown.  We do the same with
python-liquid 2.x plus Jekyll's own tags and filters:

* `{{ site.* }}`, `{{ page.* }}`, the `relative_url` / `absolute_url` filters
  and a handful of other Jekyll filters (`date_to_xmlschema`, `slugify`, …);
* `{% raw %}` (kept literally), `{% comment %}`;
* `{% highlight lang %}` → a fenced code block (Markdown then highlights it);
* `{% post_url name %}` and `{% link path %}` → URLs of those posts and pages
  (under `baseurl`, as Jekyll prints them);
* `{% include file.html key=value %}` from the site's `_includes`, with
  `include.key` inside (Jekyll's syntax, not Shopify's), and
  `{% include_relative file.md %}` from the post's own folder (never outside
  the site, never with `..`: Jekyll refuses those too).

Anything else — a plugin's tag, an unknown filter —
is dropped with a warning naming the tag and its line.  A variable that is not
defined and renders as nothing (`{{ site.data.releases.first.version }}`
without that data file) is a warning too: the reader would see a hole.  A
`{{ … }}` the strict parser refuses (`{{ .Name }}`: code of another template
language) is parsed laxly, as Jekyll parses it (`liquidlax`), with a warning
unless `_config.yml` says `liquid: error_mode: lax`; `strict` makes any syntax
error a `PostError`, as Jekyll's build stops.  If the remaining Liquid
still cannot be parsed, every `{% %}` / `{{ }}` is stripped with a warning, so
no post fails because of Liquid and no `{%` reaches an email.
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from liquid import Environment, Undefined
from liquid.builtin.tags.include_tag import IncludeNode, IncludeTag
from liquid.exceptions import LiquidError, LiquidSyntaxError
from liquid.loader import BaseLoader, TemplateSource

from newsletter.errors import PostError
from newsletter.posts import liquidlax
from newsletter.posts.liquidfilters import JEKYLL_FILTERS as _JEKYLL_FILTERS


@dataclass(frozen=True)
class LiquidWarning:
    message: str
    line: int | None


@dataclass(frozen=True)
class LiquidResult:
    text: str
    warnings: tuple[LiquidWarning, ...]


# `{% post_url name %}` / `{% link path %}` resolver: the name → its URL
# (under `baseurl`: Markdown's links are made absolute later), or None.
Resolver = Callable[[str], str | None]


# The undefined variables a render printed as nothing: (name, offset in the
# post's prepared text, or None inside an include).
_UNDEFINED_SEEN: contextvars.ContextVar[list[tuple[str, int | None, str, bool]] | None] = (
    contextvars.ContextVar("undefined_seen", default=None)
)


@dataclass(frozen=True)
class Relative:
    """Where `{% include_relative %}` looks: the post's own folder, inside the
    site's source.  `digest` reads a file's digest (None: no such file) through
    the post's lookups, so that the post index sees the file change."""

    folder: Path
    root: Path
    digest: Callable[[Path], str | None]


# The resolvers of the post being rendered, for the includes it reads.
_RESOLVERS: contextvars.ContextVar[tuple[Resolver, Resolver, Relative | None] | None] = (
    contextvars.ContextVar("resolvers", default=None)
)
# The name an `{% include_relative %}` becomes for the include loader.
_RELATIVE = "include_relative:"
# Jekyll's IncludeTag#validate_file_name: no `..`, `./`, `//` and only these characters.
_BAD_SEQUENCE = re.compile(r"[./]{2,}")
_FILE_CHARS = re.compile(r"[\w/.\-()+~#@]+")


_VARIABLE = re.compile(r"[\w-]+(?:\.[\w-]+|\[[^\]\n]{0,100}\])*")


class _RecordingUndefined(Undefined):
    """Renders as nothing, like Liquid's default, and remembers that it did."""

    def __str__(self) -> str:
        seen = _UNDEFINED_SEEN.get()
        if seen is not None and not liquidlax.LAX_RENDERING.get():
            token = self.token
            if token is None:
                seen.append((self.name, None, "", False))
            else:
                found = _VARIABLE.match(token.source, token.start_index)
                name = found.group(0) if found and found.group(0) else self.name
                seen.append((name, token.start_index, token.source, False))
        return ""


class _JekyllIncludeNode(IncludeNode):
    """Jekyll's include: the parameters are `include.*` inside the file."""

    def render_to_output(self, context: Any, buffer: TextIO) -> int:
        name = self.name.evaluate(context)
        out = io.StringIO()
        try:
            template = context.env.get_template(str(name), context=context, tag=self.tag)
            params = {arg.name: arg.value.evaluate(context) for arg in self.args}
            with context.extend({"include": params}, template=template):
                template.render_with_context(context, out, partial=True)
        except LiquidError as exc:
            if isinstance(exc, LiquidSyntaxError) and context.env.error_mode == liquidlax.STRICT:
                raise  # Jekyll's build fails on it
            # One broken include costs its own output, not the post's Liquid.
            seen = _UNDEFINED_SEEN.get()
            if seen is not None:
                message = f"{{% include {name} %}} dropped: {exc.message}"
                seen.append((message, self.token.start_index, self.token.source, True))
            return False
        buffer.write(out.getvalue())
        return True


class _JekyllIncludeTag(IncludeTag):
    node_class = _JekyllIncludeNode


class _IncludeLoader(BaseLoader):
    """Files under the site's `_includes`, with Jekyll-only tags made plain."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def get_source(self, env: Environment, template_name: str, **kwargs: object) -> TemplateSource:
        from liquid.exceptions import TemplateNotFoundError

        post_url, link, relative = _RESOLVERS.get() or (_nothing, _nothing, None)
        if template_name.startswith(_RELATIVE):
            path = Path(template_name[len(_RELATIVE) :])
            # Checked by the prepass already; again here, where it is read.
            if relative is None or not path.is_relative_to(relative.root.resolve()):
                raise TemplateNotFoundError(template_name)
        elif self.folder is None:
            raise TemplateNotFoundError(template_name)
        else:
            path = (self.folder / template_name).resolve()
            if not path.is_relative_to(self.folder.resolve()):
                raise TemplateNotFoundError(template_name)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateNotFoundError(template_name) from exc
        # Tags in an include are checked like a post's; their warnings would
        # point at the wrong file, so they are not reported.  `{% post_url %}`,
        # `{% link %}` and `{% include_relative %}` resolve as in the post
        # including it (read each time: this loader keeps nothing).
        prepared = _Prepass(text, post_url, link, 1, self.folder, relative).run().text
        return TemplateSource(prepared, str(path), None)


def _nothing(_: str) -> str | None:
    return None


class _JekyllEnvironment(Environment):
    # A post is not a program: bound runaway loops and output.
    loop_iteration_limit = 100_000
    output_stream_limit = 20_000_000
    keyword_assignment = True  # {% include x.html key=value %}
    error_mode = liquidlax.WARN  # the site's `liquid: error_mode`, for `LaxOutput`


_RAW = r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}"
_COMMENT = r"\{%-?\s*comment\s*-?%\}.*?\{%-?\s*endcomment\s*-?%\}"
# Bounded lengths keep a text full of stray `{%` linear rather than quadratic.
_TOKEN = re.compile(
    rf"(?P<raw>{_RAW})|(?P<comment>{_COMMENT})"
    r"|(?P<tag>\{%-?\s*(?P<name>[#\w-]*)(?P<args>.{0,1000}?)-?%\})"
    r"|(?P<output>\{\{.{0,1000}?\}\})"
    r"|(?P<open>\{[%{])",
    re.S,
)
_FILTER = re.compile(r"\|\s*([A-Za-z_][\w-]*)")
_STRING = re.compile(r"\"[^\"]*\"|'[^']*'")
_STRIP_ALL = re.compile(r"\{%.{0,1000}?%\}|\{\{.{0,1000}?\}\}|\{(?=[%{])", re.S)
MAX_WARNINGS = 20  # per post; a page of identical warnings helps nobody
_DROPPED_TAGS = frozenset({"render"})
_INCLUDE_ARG = re.compile(r"""([\w-]+)\s*=\s*("[^"]*"|'[^']*'|[^\s"']+)""")
_INTERMEDIATE = frozenset({"else", "elsif", "when"})
# Whitespace control next to a `{% highlight %}` fence: a line break that no
# `{%-` / `-%}` can trim (a raw block's text is not trimmed).
# An unknown scheme: `markup.sanitise_html` removes the href, keeps the words.
MISSING_LINK = "missing-link:"
_KEPT_NEWLINE = "{% raw %}\n{% endraw %}"
_TRIMS_BEFORE = re.compile(r"\s*\{[{%]-")
_TRIMS_AFTER = re.compile(r"-[%}]\}\s*\Z")
_RAW_HINT = "wrap code in {% raw %}…{% endraw %} to show it as written"


def render(
    text: str,
    *,
    site: Mapping[str, Any],
    page: Mapping[str, Any],
    post_url: Resolver,
    link: Resolver,
    first_line: int = 1,
    includes: Path | None = None,
    relative: Relative | None = None,
) -> LiquidResult:
    """`text` with its Liquid rendered; problems become warnings, never errors.

    `includes` is the site's `_includes` folder (None: includes are dropped);
    `relative` where `{% include_relative %}` reads (None: dropped too).
    """
    if "{%" not in text and "{{" not in text:
        return LiquidResult(text, ())
    prepass = _Prepass(text, post_url, link, first_line, includes, relative)
    prepared = prepass.run()
    warnings = list(prepared.warnings)
    mode = liquidlax.error_mode(site)
    env = environment(includes, mode)
    seen: list[tuple[str, int | None, str, bool]] = []
    token = _UNDEFINED_SEEN.set(seen)
    resolvers = _RESOLVERS.set((post_url, link, relative))
    try:
        template, syntax = _parse(env, prepared.text)
        output = template.render(site=site, page=page, jekyll={"environment": "production"})
        warnings.extend(_syntax_warnings(syntax, prepared.text, first_line))
        warnings.extend(_undefined_warnings(seen, prepared.text, first_line))
    except (LiquidError, ValueError, TypeError, ArithmeticError, LookupError) as exc:
        # A filter given what it cannot take (python-liquid passes a Python
        # error through unwrapped) is the same as a Liquid error: a warning.
        context = exc.context() if isinstance(exc, LiquidError) else None
        line = context[0] + first_line - 1 if context else None
        message = str(exc.message) if isinstance(exc, LiquidError) else f"{exc}"
        if mode == liquidlax.STRICT and isinstance(exc, LiquidSyntaxError):
            raise _strict_error(exc, first_line) from exc
        warnings.append(LiquidWarning(f"Liquid error, all Liquid markup removed: {message}", line))
        output = _STRIP_ALL.sub("", _unraw(prepared.text))
    finally:
        _UNDEFINED_SEEN.reset(token)
        _RESOLVERS.reset(resolvers)
    return LiquidResult(output, tuple(warnings))


def _parse(env: Environment, text: str) -> tuple[Any, list[tuple[str, int]]]:
    """The post's template, and the statements parsed laxly (message, offset)."""
    syntax: list[tuple[str, int]] = []
    token = liquidlax.SYNTAX_SEEN.set(syntax)
    try:
        return env.from_string(text), syntax
    finally:
        liquidlax.SYNTAX_SEEN.reset(token)


def _syntax_warnings(
    syntax: list[tuple[str, int]], source: str, first_line: int
) -> Iterator[LiquidWarning]:
    for message, offset in syntax[:MAX_WARNINGS]:
        line = source.count("\n", 0, offset) + first_line
        yield LiquidWarning(f"{message}; rendered laxly, as Jekyll does ({_RAW_HINT})", line)
    if len(syntax) > MAX_WARNINGS:
        more = len(syntax) - MAX_WARNINGS
        yield LiquidWarning(f"… and {more} more Liquid syntax warnings", None)


def _strict_error(exc: LiquidSyntaxError, first_line: int) -> PostError:
    """`liquid: error_mode: strict`: Jekyll's build stops, the post is an error."""
    context = exc.context()
    message = str(exc.message)
    if not message.startswith("Liquid syntax error"):
        message = f"Liquid syntax error: {message}"
    strict = "(_config.yml sets liquid: error_mode: strict)"
    if exc.template_name:  # in an include: a line of that file, not of the post
        where = f", line {context[0]}" if context else ""
        return PostError(f"{message} in {exc.template_name}{where} {strict}")
    return PostError(f"{message} {strict}", line=context[0] + first_line - 1 if context else None)


def _undefined_warnings(
    seen: list[tuple[str, int | None, str, bool]], source: str, first_line: int
) -> Iterator[LiquidWarning]:
    reported: set[tuple[str, int | None]] = set()
    for name, offset, token_source, is_include in seen:
        line = None
        if offset is not None and token_source is source:
            line = source.count("\n", 0, offset) + first_line
        if is_include:
            if (name, line) not in reported:
                reported.add((name, line))
                yield LiquidWarning(name, line)
            continue
        if (name, line) in reported or len(reported) >= MAX_WARNINGS:
            continue
        reported.add((name, line))
        yield LiquidWarning(f"undefined variable '{name}' renders as nothing", line)


def _unraw(text: str) -> str:
    return re.sub(r"\{%-?\s*(?:end)?raw\s*-?%\}", "", text)


class _Prepass:
    """Rewrites Jekyll-only tags into text and drops unknown ones, one pass."""

    def __init__(
        self,
        text: str,
        post_url: Resolver,
        link: Resolver,
        first_line: int,
        includes: Path | None = None,
        relative: Relative | None = None,
    ) -> None:
        self.includes = includes
        self.relative = relative
        self.text = text
        self.post_url = post_url
        self.link = link
        self.first_line = first_line
        self.warnings: list[LiquidWarning] = []
        self.dropped = 0
        self._newlines: list[int] | None = None
        self.known = known_tags()
        self.filters = frozenset(environment(None).filters)

    def run(self) -> LiquidResult:
        out = _TOKEN.sub(self._token, self.text)
        if self.dropped > len(self.warnings):
            more = self.dropped - len(self.warnings)
            self.warnings.append(LiquidWarning(f"… and {more} more Liquid warnings", None))
        return LiquidResult(out, tuple(self.warnings))

    def _line(self, pos: int) -> int:
        if self._newlines is None:
            self._newlines = [i for i, char in enumerate(self.text) if char == "\n"]
        return bisect.bisect_left(self._newlines, pos) + self.first_line

    def _warn(self, message: str, pos: int) -> None:
        self.dropped += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(LiquidWarning(message, self._line(pos)))

    def _token(self, match: re.Match[str]) -> str:
        if match.group("raw"):
            return match.group(0)
        if match.group("comment"):
            return "\n" * match.group(0).count("\n")  # keep line numbers
        if match.group("open"):
            self._warn(f"unterminated Liquid markup '{match.group(0)}' dropped", match.start())
            return ""
        if match.group("output"):
            self._check_filters(match.group(0), match.start())
            return match.group(0)
        return self._tag(match)

    def _tag(self, match: re.Match[str]) -> str:
        name, args, pos = match.group("name"), match.group("args").strip(), match.start()
        if name == "highlight":
            lang, *options = args.split() or [""]
            if any(o.startswith("linenos") for o in options):
                # Jekyll numbers the lines in a gutter (Rouge's table); so does Pygments.
                lang = "{ " + (f".{lang} " if lang else "") + 'linenums="1" }'
            after = match.end()
            newline = "" if after >= len(self.text) or self.text[after] == "\n" else "\n"
            # `{% endif -%}` before it would trim the line break the fence needs.
            trimmed = _TRIMS_AFTER.search(self.text, 0, pos)
            start = _KEPT_NEWLINE if trimmed else self._line_start(pos)
            return start + f"```{lang}" + newline
        if name == "endhighlight":
            # `{%- if %}` after it would trim the line break that closes the fence.
            trimmed = _TRIMS_BEFORE.match(self.text, match.end())
            return self._line_start(pos) + "```" + (_KEPT_NEWLINE if trimmed else "")
        if name in ("post_url", "link"):
            return self._resolve(name, args, pos, match.end())
        if name in ("include", "include_cached"):  # include_cached: jekyll-include-cache
            return self._include(args, pos)
        if name == "include_relative":
            return self._include_relative(args, pos)
        if name in _DROPPED_TAGS:
            self._warn(f"{{% {name} {args} %}} dropped (includes are not available in email)", pos)
            return ""
        if name in self.known:
            self._check_filters(args, pos)
            return match.group(0)
        if not (name.startswith("end") and name[3:] not in self.known):
            self._warn(f"unknown Liquid tag {{% {name} %}} dropped", pos)
        return ""

    def _include(self, args: str, pos: int) -> str:
        """Jekyll's `{% include file.html a=b c="d" %}` in python-liquid's syntax."""
        file_name, _, rest = args.partition(" ")
        if not file_name or "{{" in file_name:
            self._warn(f"{{% include {args} %}} dropped (a computed include name)", pos)
            return ""
        if self.includes is None or not (self.includes / file_name).is_file():
            self._warn(f"{{% include {file_name} %}} dropped (not in _includes)", pos)
            return ""
        params = "".join(f", {k}={v}" for k, v in _INCLUDE_ARG.findall(rest))
        self._check_filters(rest, pos)
        return f"{{% include {json.dumps(file_name)}{params} %}}"

    def _include_relative(self, args: str, pos: int) -> str:
        """`{% include_relative file.md a=b %}`: a file beside the post, inside the site."""
        file_name, _, rest = args.partition(" ")
        problem = None
        if not file_name or "{{" in file_name:
            problem = "a computed include name"
        elif not _FILE_CHARS.fullmatch(file_name) or _BAD_SEQUENCE.search(file_name):
            problem = "a name with '..', './' or '//' or other characters Jekyll refuses"
        elif self.relative is None:
            problem = "not in a site"
        if problem is None and self.relative is not None:
            path = (self.relative.folder / file_name.lstrip("/")).resolve()
            if not path.is_relative_to(self.relative.root.resolve()):
                problem = "outside the site"
            elif self.relative.digest(path) is None:
                problem = f"no such file in {self._shown(self.relative.folder)}"
        if problem is not None:
            self._warn(f"{{% include_relative {file_name} %}} dropped ({problem})", pos)
            return ""
        params = "".join(f", {k}={v}" for k, v in _INCLUDE_ARG.findall(rest))
        self._check_filters(rest, pos)
        return f"{{% include {json.dumps(_RELATIVE + str(path))}{params} %}}"

    def _shown(self, folder: Path) -> str:
        relative = self.relative
        if relative is not None and folder.is_relative_to(relative.root):
            return folder.relative_to(relative.root).as_posix() + "/"
        return str(folder)

    def _line_start(self, pos: int) -> str:
        # A Markdown fence must begin a line; after only an indent (the tag in
        # a list item) it does, and keeps that indent (`kramdown` nests it).
        start = self.text.rfind("\n", 0, pos) + 1
        return "" if not self.text[start:pos].strip(" \t") else "\n"

    def _resolve(self, name: str, args: str, pos: int, end: int) -> str:
        # `{% link my notes/a b.md %}`: Jekyll's link takes the whole path.
        target = args if name == "link" else args.split()[0] if args else ""
        resolver = self.post_url if name == "post_url" else self.link
        url = resolver(target) if target else None
        if url is None:
            what = "no such post" if name == "post_url" else "no such post, page or file"
            self._warn(f"{{% {name} {target} %}}: {what}; link dropped", pos)
            # As a link's target (`[about]({% link about.md %})`), an empty
            # one would lead to the post itself: a scheme the sanitiser drops
            # leaves the words without a link.
            before, after = self.text[:pos].rstrip(), self.text[end:].lstrip()
            linked = before.endswith(("](", 'href="', "href='")) and after[:1] in (")", '"', "'")
            return MISSING_LINK if linked else ""
        return url

    def _check_filters(self, source: str, pos: int) -> None:
        for filter_name in _FILTER.findall(_STRING.sub("", source)):
            if filter_name not in self.filters:
                self._warn(f"unknown Liquid filter '{filter_name}' ignored", pos)


@functools.cache
def known_tags() -> frozenset[str]:
    tags = set(environment(None).tags) - _DROPPED_TAGS - {"illegal", "content", "output"}
    return frozenset(tags | _INTERMEDIATE | {f"end{t}" for t in tags} | {"raw", "endraw"})


@functools.cache
def environment(includes: Path | None = None, error_mode: str = liquidlax.WARN) -> Environment:
    """One environment per `_includes` folder and error mode: building it costs
    more than rendering a post (and parsed includes are cached with it)."""
    env = _JekyllEnvironment(
        strict_filters=False, loader=_IncludeLoader(includes), undefined=_RecordingUndefined
    )
    env.error_mode = error_mode
    env.add_tag(_JekyllIncludeTag)
    env.add_tag(liquidlax.LaxOutput)
    for name, func in _JEKYLL_FILTERS.items():
        env.add_filter(name, func)
    return env
