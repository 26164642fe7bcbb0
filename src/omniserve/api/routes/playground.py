"""The web playground: a static page (`/` and `/playground`) that talks to this server's own API with the
key the person types in. Its files ship in the package (omniserve/playground/); --disable-playground
leaves it out."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGES = Path(__file__).resolve().parents[2] / "playground"
STATIC = "/playground/static"
PAGES_PATHS = frozenset({"/", "/playground"})  # with its static files, open without a key: the page asks for it

router = APIRouter()


@router.get("/", include_in_schema=False)
@router.get("/playground", include_in_schema=False)  # PAGES_PATHS
async def playground() -> FileResponse:
    return FileResponse(PAGES / "index.html", media_type="text/html")


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=PAGES), name="playground")
