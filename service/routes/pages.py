"""Pages for people: `/` (links) and `/demo` (the live demo), static files shipped in service/pages.

No auth: the pages hold no data; the demo's own API calls carry the key the user types into it.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)
_PAGES = resources.files("service") / "pages"


def _read(name: str) -> str:
    return (_PAGES / name).read_text(encoding="utf-8")


@router.get("/")
async def index() -> HTMLResponse:
    return HTMLResponse(_read("index.html"))


@router.get("/demo")
async def demo() -> HTMLResponse:
    return HTMLResponse(_read("demo.html"))


@router.get("/demo/demo.js")
async def demo_script() -> Response:
    return Response(_read("demo.js"), media_type="text/javascript")
