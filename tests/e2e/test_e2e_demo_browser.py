"""The live demo page and the API docs in a real headless Chromium (Debian's, driven by Playwright).

The lm tab must show the same suggestions the API gives for the typed text and take a clicked one;
the sensor tab must stream the simulated plant with few flags and flag an injected spike; /docs must
render with no request leaving the server. With API keys on, the page must say it needs one, refuse a
wrong one visibly, and work with the right one. Screenshots of both tabs go to a temporary directory, or
to RNNSERVE_SCREENSHOTS (`RNNSERVE_SCREENSHOTS=docs` writes the README's pictures); a plain run leaves
the tree as it was.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from e2e_support import KEYS, ServerProcess, auth

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
# each test skips on its own, so the closing summary counts them all (a module-level skip counts as one)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium (apt-get install chromium)"),
    pytest.mark.skipif(
        not HAVE_PLAYWRIGHT, reason="the playwright package is missing (pip install -e '.[dev]')"
    ),
]
if HAVE_PLAYWRIGHT:
    from playwright.sync_api import Browser, Page, sync_playwright

PREFIX = "the game was released in "
READING_BLUE = (0x2B, 0x6C, 0xB0)  # the chart's reading line (demo.js draw())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(ROOT / "models", tmp_path_factory.mktemp("demo")).wait_ready()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RNNSERVE_SCREENSHOTS when set (relative to the current directory), else a temporary directory."""
    chosen = os.environ.get("RNNSERVE_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Page, path: Path, height: int) -> None:
    page.screenshot(path=path, clip={"x": 0, "y": 0, "width": 1000, "height": height})
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@contextmanager
def fresh_page(browser: Browser) -> Iterator[Page]:
    """A page in a context of its own (own localStorage, where the demo keeps the key); no script errors."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == []


@pytest.fixture(scope="module")
def page(browser: Browser) -> Iterator[Page]:
    with fresh_page(browser) as page:
        yield page


def expected_suggestions(url: str, text: str, partial: str = "", key: str | None = None) -> list[str]:
    """What the page must show, from the API directly: a session at a line start, the text, top 30
    filtered by the partial word, the first six."""
    with httpx.Client(base_url=url, timeout=30, headers=auth(key) if key else None) as client:
        sid = client.post("/v1/sessions", json={"model": "lm"}).json()["session_id"]
        client.post(f"/v1/sessions/{sid}/events", json={"tokens": ["<eos>"]}).raise_for_status()
        answer = client.post(f"/v1/sessions/{sid}/events", json={"text": text, "top_k": 30}).json()
    words = [n["token"] for n in answer["outputs"][-1]["next"]]
    plain = {"@-@": "-", "@,@": ",", "@.@": "."}
    return [plain.get(w, w) for w in words if w.startswith(partial)][:6]


def shown(page: Page) -> list[str]:
    return [re.sub(r"\d+\.\d%$", "", b) for b in page.locator("#suggestions button").all_inner_texts()]


def test_lm_tab_suggests_as_you_type_and_takes_a_click(
    server: ServerProcess, page: Page, screenshots: Path
) -> None:
    page.goto(f"{server.url}/demo")
    page.locator("#text").press_sequentially(PREFIX, delay=20)
    want = expected_suggestions(server.url, PREFIX.strip())
    page.wait_for_function("document.querySelector('#lm-status').textContent.startsWith('seq 6')")
    page.wait_for_function(f"document.querySelectorAll('#suggestions button').length === {len(want)}")
    assert shown(page) == want
    page.locator("#suggestions button").first.click()
    page.wait_for_function("document.querySelector('#lm-status').textContent.startsWith('seq 7')")
    assert page.locator("#text").input_value() == PREFIX + want[0] + " "
    page.wait_for_function("document.querySelectorAll('#suggestions button').length === 6")
    screenshot(page, screenshots / "demo-lm.png", 380)
    # a partial word narrows the suggestions to the words that start with it
    typed = f"{PREFIX}{want[0]}"
    partial = next(w for w in expected_suggestions(server.url, typed) if len(w) > 2)[:2]
    narrowed = expected_suggestions(server.url, typed, partial=partial)
    page.locator("#text").press_sequentially(partial, delay=20)
    page.wait_for_function(f"document.querySelectorAll('#suggestions button').length === {len(narrowed)}")
    assert shown(page) == narrowed and all(word.startswith(partial) for word in narrowed)


def test_sensor_tab_streams_the_plant_and_flags_a_spike(
    server: ServerProcess, page: Page, screenshots: Path
) -> None:
    page.goto(f"{server.url}/demo#sensor")
    page.reload()  # the hash alone does not reload
    flagged = re.compile(r"seq (\d+): (\d+) reading")

    def progress() -> tuple[int, int]:
        found = flagged.search(page.locator("#sensor-status").inner_text())
        return (int(found.group(1)), int(found.group(2))) if found else (0, 0)

    # past the likelihood's warm-up (service/anomaly.py WARMUP: 250 scored readings), when flags can start
    page.wait_for_function("/seq (3[0-9][0-9])/.test(document.querySelector('#sensor-status').textContent)")
    seq, normal_flags = progress()
    assert normal_flags <= 0.05 * seq, (seq, normal_flags)  # the simulated plant looks normal to the model
    page.locator("#spike").click()
    page.wait_for_timeout(1500)
    after_seq, after_flags = progress()
    assert after_seq > seq and after_flags > normal_flags, "the injected spike was not flagged"
    screenshot(page, screenshots / "demo-sensor.png", 880)


def test_api_docs_render_offline(server: ServerProcess, page: Page) -> None:
    """Every request the pages make goes to the server; the one the ReDoc bundle would send elsewhere
    (Redocly's logo) is blocked by the page's policy (failure "csp") before it goes out."""
    reached: set[str] = set()
    blocked: list[str] = []
    page.on("response", lambda response: reached.add(urlsplit(response.url).netloc))
    page.on(
        "requestfailed",
        lambda request: blocked.append(f"{request.url} {request.failure}"),
    )
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "rnnserve" in page.locator(".swagger-ui .info .title").inner_text()
    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("h1")
    assert "rnnserve" in page.locator("h1").first.inner_text()
    page.wait_for_timeout(500)
    assert reached - {""} == {urlsplit(server.url).netloc}
    # anything else that failed was a request for another host (no network here) or a broken asset
    assert all(failure.endswith(" csp") for failure in blocked), blocked


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(ROOT / "models", tmp_path_factory.mktemp("demo-keys"), api_keys=KEYS[0])
    yield process.wait_ready()
    assert process.stop() == 0, process.log()


def status_says(page: Page, section: str, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#{section}-status').textContent.includes({text!r})")
    assert "error" in (page.locator(f"#{section}-status").get_attribute("class") or "")


def reading_pixels(page: Page) -> int:
    """Pixels of the chart in the reading line's colour (0 while nothing is drawn)."""
    count: int = page.evaluate(
        """([r, g, b]) => {
             const c = document.querySelector('#chart');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0;
             for (let i = 0; i < d.length; i += 4) if (d[i] === r && d[i + 1] === g && d[i + 2] === b) n++;
             return n;
           }""",
        list(READING_BLUE),
    )
    return count


def use_key(page: Page, key: str) -> None:
    page.locator("#key").fill(key)
    with page.expect_navigation():  # a new key starts the page over
        page.locator("#key-form button").click()


def test_demo_with_api_keys_asks_for_one_refuses_a_wrong_one_and_works_with_it(
    keyed_server: ServerProcess, browser: Browser
) -> None:
    with fresh_page(browser) as page:
        page.goto(f"{keyed_server.url}/demo")
        status_says(page, "lm", "This server needs an API key")
        page.locator("#tab-sensor").click()
        status_says(page, "sensor", "This server needs an API key")
        assert reading_pixels(page) == 0

        use_key(page, "not-" + KEYS[0])
        status_says(page, "sensor", "The server refused this API key (the API key is not valid)")
        page.locator("#tab-lm").click()
        status_says(page, "lm", "The server refused this API key")

        use_key(page, KEYS[0])
        assert page.locator("#key").input_value() == KEYS[0]  # kept by the page across the reload
        page.locator("#text").press_sequentially(PREFIX, delay=20)
        want = expected_suggestions(keyed_server.url, PREFIX.strip(), key=KEYS[0])
        page.wait_for_function("document.querySelector('#lm-status').textContent.startsWith('seq 6')")
        page.wait_for_function(f"document.querySelectorAll('#suggestions button').length === {len(want)}")
        assert shown(page) == want
        page.locator("#tab-sensor").click()
        # the warm-up day (144 readings) in one message, then live readings over the stream
        page.wait_for_function(
            "/seq (1[5-9][0-9]|[2-9][0-9][0-9]):/.test(document.querySelector('#sensor-status').textContent)"
        )
        assert reading_pixels(page) > 1000
