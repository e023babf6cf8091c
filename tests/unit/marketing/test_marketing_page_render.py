"""The one-click answer page, joined around its one per-user value, is the page Jinja2 renders, escaping
included."""

from __future__ import annotations

from synergy_marketing.preferences_api import PAGE_HEADERS, _page, _page_with


def test_the_joined_page_is_the_rendered_page_with_the_value_escaped() -> None:
    link = '/preferences?token=abc.def&x="<script>'
    joined = _page_with("unsubscribed.html", "preferences_link", link)
    rendered = _page("unsubscribed.html", preferences_link=link)
    assert joined.body == rendered.body
    assert b'href="/preferences?token=abc.def&amp;x=&#34;&lt;script&gt;"' in joined.body
    assert b"<script>" not in joined.body
    assert joined.status_code == 200
    assert joined.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert joined.headers["content-type"] == "text/html; charset=utf-8"
