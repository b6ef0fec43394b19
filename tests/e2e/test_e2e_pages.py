"""Pages a person opens in a browser, over a real server: offline API docs, the index, the demo.

Every URL a page references must be on the server itself (an air-gapped host has no CDN) and answer.
The browser test (tests/e2e/test_e2e_demo_browser.py) renders them in a real Chromium.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from e2e_support import ServerProcess, auth

pytestmark = pytest.mark.e2e


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in {"src", "href"} and value]


def local_page(url: str) -> tuple[str, list[str]]:
    """The page's HTML and every URL it references (attributes, and absolute URLs in inline code),
    each checked to be on the same server and to answer 200."""
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), url
    parser = _Links()
    parser.feed(page.text)
    inline = re.findall(r"""(?:https?:)?//[^\s"'`)<>]+""", page.text)
    urls = [urljoin(url, u) for u in parser.urls + inline]
    for target in urls:
        assert urlsplit(target).netloc == urlsplit(url).netloc, f"{url} references {target}"
        if not target.startswith(("ws:", "wss:")):
            assert httpx.get(target, headers=auth(), timeout=30).status_code == 200, target
    return page.text, urls


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_load_every_asset_from_the_server(server: ServerProcess, path: str) -> None:
    text, urls = local_page(server.url + path)
    assert any(u.endswith(".js") for u in urls) and "/openapi.json" in text
    assert '"validatorUrl": null' in text or path == "/redoc"  # no spec sent to validator.swagger.io


def test_index_and_demo_are_served_from_here_and_linked(server: ServerProcess) -> None:
    _, index_urls = local_page(server.url + "/")
    assert f"{server.url}/demo" in index_urls and f"{server.url}/docs" in index_urls
    text, demo_urls = local_page(server.url + "/demo")
    assert f"{server.url}/demo/demo.js" in demo_urls and "<canvas" in text
    assert f"live demo {server.url}/demo" in server.log()  # the start banner links it
