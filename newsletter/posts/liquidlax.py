"""Ruby Liquid's lax parse of an output statement, for what strict parsing refuses.

Jekyll's default `liquid: error_mode: warn` parses `{{ … }}` strictly and, when
that fails (a Go template's `{{ .Name }}`, Handlebars' `{{#each items}}`,
Jinja's `{{ a if b else c }}`), warns and parses it again laxly: the first
"quoted fragment" is the value, the words after each `|` are filters, and
whatever else is there is ignored.  python-liquid's own `Mode.LAX` instead
drops the statement, so `lax_expression` ports liquid 5.4's `Variable#lax_parse`,
`Expression.parse` and `VariableLookup` (the version Debian's `jekyll` runs),
regular expressions included, and builds python-liquid expressions from them.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Mapping
from typing import Any, TextIO

from liquid.builtin.expressions import (
    Filter,
    FilteredExpression,
    KeywordArgument,
    Nil,
    Path,
    PositionalArgument,
    StringLiteral,
    tokenize,
)
from liquid.builtin.expressions.primitive import (
    FalseLiteral,
    FloatLiteral,
    IntegerLiteral,
    RangeLiteral,
    TrueLiteral,
)
from liquid.builtin.output import Output, OutputNode
from liquid.exceptions import LiquidError
from liquid.expression import Expression
from liquid.stream import TokenStream
from liquid.token import TOKEN_EXPRESSION, TOKEN_OUTPUT, Token

# Jekyll's `liquid: error_mode` values (Liquid takes any other as lax).
WARN, STRICT, LAX = "warn", "strict", "lax"

# While a post's own text is parsed: (message, offset in its prepared text)
# per statement parsed laxly.  Unset while an include is parsed: Jekyll
# renders those laxly without a warning.
SYNTAX_SEEN: contextvars.ContextVar[list[tuple[str, int]] | None] = contextvars.ContextVar(
    "syntax_seen", default=None
)
# Set while a laxly parsed statement renders: the warning about its syntax
# already explains the hole, an undefined name in it would say it twice.
LAX_RENDERING: contextvars.ContextVar[bool] = contextvars.ContextVar("lax_rendering", default=False)


def error_mode(site: Mapping[str, Any]) -> str:
    """The site's `liquid: error_mode` (`_config.yml`), as Jekyll reads it:
    `warn` by default, `strict` and `warn` as written, anything else lax."""
    config = site.get("liquid")
    mode = config.get("error_mode") if isinstance(config, Mapping) else None
    if mode is None or mode in (WARN, STRICT):
        return mode or WARN
    return LAX


class LaxOutputNode(OutputNode):
    """`{{ … }}` parsed laxly: renders without undefined-variable warnings."""

    def render_to_output(self, context: Any, buffer: TextIO) -> int:
        token = LAX_RENDERING.set(True)
        try:
            return super().render_to_output(context, buffer)
        finally:
            LAX_RENDERING.reset(token)


class LaxOutput(Output):
    """Output statements parsed as Jekyll parses them: strictly, and laxly
    with a warning (`warn`) or without (`lax`) where that fails.  The
    environment's `error_mode` says which; `strict` raises."""

    def parse(self, stream: TokenStream) -> OutputNode:
        token = stream.eat(TOKEN_OUTPUT)
        expr_token = stream.expect(TOKEN_EXPRESSION)
        try:
            tokens = TokenStream(tokenize(expr_token.value, expr_token))
            return self.node_class(token, FilteredExpression.parse(self.env, tokens))
        except LiquidError as exc:
            if not expr_token.value.strip():  # `{{ }}`: Ruby's strict parser takes it
                return LaxOutputNode(token, Nil(expr_token))
            mode = getattr(self.env, "error_mode", WARN)
            if mode == STRICT:
                exc.args = (f"Liquid syntax error in {token.value}: {exc.message}",)
                raise
            seen = SYNTAX_SEEN.get()
            if mode == WARN and seen is not None:
                message = f"Liquid syntax error in {token.value}: {exc.message}"
                seen.append((message, token.start_index))
        return LaxOutputNode(token, lax_expression(expr_token.value, expr_token))


# liquid/lib/liquid.rb and variable.rb; Ruby's \w and \s are ASCII only.
_QUOTED_STRING = r"\"[^\"]*\"|'[^']*'"
_QUOTED_FRAGMENT = rf"(?:{_QUOTED_STRING}|(?:[^\s,|'\"]|{_QUOTED_STRING})+)"
_MARKUP = re.compile(rf"({_QUOTED_FRAGMENT})(.*)", re.S | re.A)
_FILTER_MARKUP = re.compile(r"\|\s*(.*)", re.S | re.A)
_FILTER = re.compile(rf"(?:\s+|{_QUOTED_FRAGMENT}|,)+", re.A)
_FILTER_ARG = re.compile(rf"(?::|,)\s*((?:\w+\s*:\s*)?{_QUOTED_FRAGMENT})", re.A)
_KEYWORD_ARG = re.compile(rf"(\w[\w-]*)\s*:\s*({_QUOTED_FRAGMENT})", re.A)
_WORD = re.compile(r"\w+", re.A)
# expression.rb and variable_lookup.rb
_INTEGER = re.compile(r"(-?\d+)", re.A)
_FLOAT = re.compile(r"(-?\d[\d.]+)", re.A)
_RANGE = re.compile(r"\(\s*(?>(\S+)\s*\.\.)\s*(\S+)\s*\)", re.A)
_SEGMENT = re.compile(r"\[[^\]]+\]|[\w-]+\??", re.A)
_RUBY_FLOAT = re.compile(r"-?\d+(?:\.\d+)?", re.A)


def lax_expression(markup: str, token: Token) -> Expression:
    """What Ruby Liquid's lax parser makes of `{{ markup }}`; `token` is where
    it was (for errors and the undefined-variable warnings)."""
    found = _MARKUP.search(markup)
    if found is None:  # nothing but spaces, commas and pipes
        return Nil(token)
    value = _expression(found.group(1), token)
    filters = _FILTER_MARKUP.search(found.group(2))
    if filters is None:
        return FilteredExpression(token, value, [])
    return FilteredExpression(token, value, list(_filters(filters.group(1), token)))


def _filters(markup: str, token: Token) -> list[Filter]:
    made = []
    for text in _FILTER.findall(markup):
        name = _WORD.search(text)
        if name is None:
            continue
        args: list[KeywordArgument | PositionalArgument] = []
        for arg in _FILTER_ARG.findall(text):
            keyword = _KEYWORD_ARG.fullmatch(arg)
            if keyword:
                value = _expression(keyword.group(2), token)
                args.append(KeywordArgument(token, keyword.group(1), value))
            else:
                args.append(PositionalArgument(_expression(arg, token)))
        made.append(Filter(token, name.group(0), args))
    return made


_LITERALS = {"nil": None, "null": None, "": None, "true": True, "false": False}


def _expression(markup: str, token: Token) -> Expression:
    """Liquid::Expression.parse: a literal, a range or a variable lookup."""
    markup = markup.strip()
    if len(markup) >= 1 and markup[0] == markup[-1] and markup[0] in "\"'":
        return StringLiteral(token, markup[1:-1])
    if _INTEGER.fullmatch(markup):
        return IntegerLiteral(token, int(markup))
    found = _RANGE.fullmatch(markup)
    if found:
        return RangeLiteral(
            token, _expression(found.group(1), token), _expression(found.group(2), token)
        )
    if _FLOAT.fullmatch(markup):
        return FloatLiteral(token, _ruby_to_f(markup))
    if markup in ("blank", "empty"):
        return StringLiteral(token, "")
    if markup in _LITERALS:
        value = _LITERALS[markup]
        if value is None:
            return Nil(token)
        return TrueLiteral(token) if value else FalseLiteral(token)
    return _lookup(markup, token)


def _ruby_to_f(text: str) -> float:
    # String#to_f reads the leading number: "1.2.3" is 1.2.
    found = _RUBY_FLOAT.match(text)
    return float(found.group(0)) if found else 0.0


def _lookup(markup: str, token: Token) -> Expression:
    """Liquid::VariableLookup: the name and keys found in `markup`, anything
    else in it skipped (`.Name` is `Name`, `!flag` is `flag`)."""
    segments: list[str | int | Path] = []
    for segment in _SEGMENT.findall(markup):
        if not segment.startswith("["):
            segments.append(segment)
            continue
        key = _expression(segment[1:-1], token)
        if isinstance(key, (StringLiteral, IntegerLiteral)):
            segments.append(key.value)
        elif isinstance(key, Path):
            segments.append(key)
        else:  # a nil, boolean, float or range key finds nothing
            return Nil(token)
    if not segments:  # `{{> partial}}`: no name at all
        return Nil(token)
    return Path(token, segments)
