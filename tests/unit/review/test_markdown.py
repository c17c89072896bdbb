"""A request's Markdown body, rendered and sanitised: structure kept, markup from the request inert."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_hlml.review.links import safe_link
from airflow_provider_hlml.review.markdown import ALLOWED_TAGS, MAX_MARKDOWN_CHARS, render_markdown
from tests.security.test_dashboard_security import BAD_LINKS, GOOD_LINKS


class Elements(HTMLParser):
    """Every start tag and its attributes, as a browser's parser would see them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_inert(html: str) -> None:
    for tag, attrs in Elements(html).tags:
        assert tag in ALLOWED_TAGS, (tag, html)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert set(attrs) <= {"href", "title", "rel", "align", "start"}, (tag, attrs)
        if "href" in attrs:
            assert safe_link(attrs["href"]) == attrs["href"], attrs


class TestRendering:
    def test_markdown_structure_is_rendered(self) -> None:
        html = render_markdown(
            "Promote `churn_predictor` to **@champion**.\n\n- accuracy *0.91*\n\n"
            "| metric | value |\n|---|---|\n| auc | 0.88 |\n\n```\ncode block\n```"
        )
        assert "<code>churn_predictor</code>" in html
        assert "<strong>@champion</strong>" in html
        assert "<li>accuracy <em>0.91</em></li>" in html
        assert "<td>auc</td>" in html
        assert "<pre><code>code block\n</code></pre>" in html
        assert_inert(html)

    @pytest.mark.parametrize("url", GOOD_LINKS)
    def test_good_links_stay_links(self, url: str) -> None:
        html = render_markdown(f"[open](<{url}>)")
        hrefs = [a.get("href") for t, a in Elements(html).tags if t == "a"]
        assert len(hrefs) == 1
        assert hrefs[0] is not None
        assert safe_link(hrefs[0]) is not None
        assert 'rel="noopener noreferrer nofollow"' in html

    @pytest.mark.parametrize("url", [u for u in BAD_LINKS if isinstance(u, str) and u])
    def test_bad_links_lose_their_href(self, url: str) -> None:
        for text in (f"[click](<{url}>)", f"<{url}>", f'<a href="{url}">click</a>', url):
            assert_inert(render_markdown(text))

    @pytest.mark.parametrize(
        "text",
        [
            "<script>alert(1)</script>",
            '<img src="x" onerror="alert(1)">',
            '<iframe src="https://evil.example"></iframe>',
            "<style>body{display:none}</style>",
            '<a href="javascript:alert(1)" onclick="alert(1)">x</a>',
            "![img](https://evil.example/pixel.png)",
            '<svg onload="alert(1)"></svg>',
            "[x](javascript:alert(1))",
            "<!-- comment --><b>bold</b>",
            '<div style="position:fixed">overlay</div>',
        ],
    )
    def test_raw_html_from_a_request_is_text(self, text: str) -> None:
        html = render_markdown(text)
        assert_inert(html)
        assert "<script" not in html
        assert "<img" not in html
        assert "<iframe" not in html
        assert "<svg" not in html
        assert "<style" not in html

    @pytest.mark.parametrize("value", [None, "", "   ", 42, ["**x**"], {"a": 1}])
    def test_nothing_to_render(self, value: Any) -> None:
        assert render_markdown(value) == ""

    def test_long_bodies_are_cut(self) -> None:
        html = render_markdown("x" * (MAX_MARKDOWN_CHARS + 5000))
        assert html.count("x") == MAX_MARKDOWN_CHARS


@given(st.text(max_size=300))
def test_any_text_renders_inert(text: str) -> None:
    assert_inert(render_markdown(text))
