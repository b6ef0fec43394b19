"""The live demo page and the API docs in a real headless Chromium (Debian's, driven by Playwright).

The lm tab must show the same suggestions the API gives for the typed text and take a clicked one;
the sensor tab must stream the simulated plant with few flags and flag an injected spike; /docs must
render with no request leaving the server. Screenshots of both tabs go to docs/ for the README.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from e2e_support import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("no chromium (apt-get install chromium)", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("the playwright package is missing (pip install -e '.[dev]')", allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402

SCREENSHOTS = ROOT / "docs"
PREFIX = "the game was released in "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(ROOT / "models", tmp_path_factory.mktemp("demo")).wait_ready()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def page(server: ServerProcess) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        browser.close()
        assert errors == []


def expected_suggestions(url: str, text: str, partial: str = "") -> list[str]:
    """What the page must show, from the API directly: a session at a line start, the text, top 30
    filtered by the partial word, the first six."""
    with httpx.Client(base_url=url, timeout=30) as client:
        sid = client.post("/v1/sessions", json={"model": "lm"}).json()["session_id"]
        client.post(f"/v1/sessions/{sid}/events", json={"tokens": ["<eos>"]}).raise_for_status()
        answer = client.post(f"/v1/sessions/{sid}/events", json={"text": text, "top_k": 30}).json()
    words = [n["token"] for n in answer["outputs"][-1]["next"]]
    plain = {"@-@": "-", "@,@": ",", "@.@": "."}
    return [plain.get(w, w) for w in words if w.startswith(partial)][:6]


def shown(page: Page) -> list[str]:
    return [re.sub(r"\d+\.\d%$", "", b) for b in page.locator("#suggestions button").all_inner_texts()]


def test_lm_tab_suggests_as_you_type_and_takes_a_click(server: ServerProcess, page: Page) -> None:
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
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "demo-lm.png", clip={"x": 0, "y": 0, "width": 1000, "height": 380})
    # a partial word narrows the suggestions to the words that start with it
    typed = f"{PREFIX}{want[0]}"
    partial = next(w for w in expected_suggestions(server.url, typed) if len(w) > 2)[:2]
    narrowed = expected_suggestions(server.url, typed, partial=partial)
    page.locator("#text").press_sequentially(partial, delay=20)
    page.wait_for_function(f"document.querySelectorAll('#suggestions button').length === {len(narrowed)}")
    assert shown(page) == narrowed and all(word.startswith(partial) for word in narrowed)


def test_sensor_tab_streams_the_plant_and_flags_a_spike(server: ServerProcess, page: Page) -> None:
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
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "demo-sensor.png", clip={"x": 0, "y": 0, "width": 1000, "height": 880})


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
