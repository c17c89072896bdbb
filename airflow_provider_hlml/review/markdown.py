"""A request's Markdown body as HTML a reviewer's page can show: parsed, then sanitised.

``markdown-it-py`` (CommonMark, raw HTML disabled) parses; ``nh3`` (the ammonia sanitiser)
keeps an allowlist of tags and attributes, and every link must pass :func:`.links.safe_link`
(only ``http(s)`` URLs with a host, or app-relative paths). Links open in a new tab without the
opener or a referrer. Both libraries are imported on first use.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from airflow_provider_hlml.review.links import safe_link

__all__ = ["ALLOWED_TAGS", "MAX_MARKDOWN_CHARS", "render_markdown"]

#: The tags a rendered body may contain: text structure, lists, code, tables, links.
ALLOWED_TAGS = frozenset(
    {
        "a", "p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote",
        "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
        "table", "thead", "tbody", "tr", "th", "td",
    }
)  # fmt: skip
_ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "th": {"align"}, "td": {"align"}, "ol": {"start"}}
#: Longer bodies are cut before rendering (a request's body is a summary, not a document).
MAX_MARKDOWN_CHARS = 20_000


@lru_cache(maxsize=1)
def _parser() -> Any:
    from markdown_it import MarkdownIt

    # "js-default": CommonMark without raw HTML, plus tables and strikethrough; no linkify.
    return MarkdownIt("js-default")


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if tag == "a" and attribute == "href":
        return safe_link(value)
    return value


def render_markdown(text: object) -> str:
    """``text`` (Markdown) as sanitised HTML; ``""`` for anything that is not a non-empty string.

    Raw HTML in the text is shown as text, never as markup; a link that fails :func:`safe_link`
    loses its ``href`` and stays as text.
    """
    import nh3

    if not isinstance(text, str) or not text.strip():
        return ""
    html = _parser().render(text[:MAX_MARKDOWN_CHARS])
    return str(
        nh3.clean(
            html,
            tags=set(ALLOWED_TAGS),
            attributes={k: set(v) for k, v in _ALLOWED_ATTRIBUTES.items()},
            attribute_filter=_attribute_filter,
            url_schemes={"http", "https"},
            link_rel="noopener noreferrer nofollow",
            strip_comments=True,
        )
    )
