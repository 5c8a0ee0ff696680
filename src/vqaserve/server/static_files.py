"""The web page's static files, served only from inside their folder.

Starlette's StaticFiles already resolves symlinks and refuses anything whose real path leaves the
folder. This subclass refuses suspicious requests before touching the file system at all, so the
answer to a probe is the same plain 404 whether or not the target exists: `..` segments (after
uvicorn's percent-decoding), a `%` left over from double encoding, backslashes, NUL bytes, absolute
paths, and dot-files.

One file in the folder is not a file: `/static/page.json` says what the pages should tell the user
about the server (`page_info`): with the bundled demo model, a line saying it knows only the
synthetic catalogue and sample catalogue pictures to try (samples/, made by
scripts/make_page_samples.py), with a model of the user's own neither; and whether answers are
captured (VQA_CAPTURE_URL), which is when the page offers thumbs and corrections.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from vqaserve.server.state import app_state
from vqaserve.settings import BUNDLED_MODELS, Settings, resolve_model_path

PAGE_INFO = "page.json"
DEMO_MODEL = "shop-toy"  # the bundled model trained on the synthetic catalogue (SHOP_CATALOGUE.md)
SAMPLES_MANIFEST = Path("samples") / "samples.json"


def serves_bundled_demo(settings: Settings) -> bool:
    """Whether the server answers with the bundled shop-toy model (by name or by its directory).

    Only the in-process engine loads `settings.llm.model`: an upstream server answers with whatever
    it serves, whatever the name, and the scripted engine is a test double.
    """
    if settings.llm.engine != "transformers":
        return False
    path = Path(resolve_model_path(settings.llm.model)).expanduser()
    return path.is_dir() and path.resolve() == (BUNDLED_MODELS / DEMO_MODEL).resolve()


@functools.cache
def _samples(static_dir: str) -> tuple[dict[str, str], ...]:
    """The committed sample pictures as the page links them (read once: they ship with the package)."""
    entries = json.loads((Path(static_dir) / SAMPLES_MANIFEST).read_text(encoding="utf-8"))
    folder = SAMPLES_MANIFEST.parent.as_posix()
    return tuple({"url": f"/static/{folder}/{e['file']}", "alt": e["alt"]} for e in entries)


def page_info(settings: Settings, static_dir: str) -> dict[str, Any]:
    """What `/static/page.json` answers: is this the bundled demo model, its sample pictures, and
    whether answers are captured (so they can be rated)."""
    demo = serves_bundled_demo(settings)
    return {"bundled_demo": demo, "samples": list(_samples(static_dir)) if demo else [],
            "capture": settings.capture.url is not None}


def is_safe_relative(path: str) -> bool:
    """A plain relative path of ordinary names: no traversal, encoding tricks or hidden files."""
    if not path or path.startswith(("/", "\\")) or any(c in path for c in "\\%\x00:"):
        return False
    return all(part and not part.startswith(".") for part in path.split("/"))


class SafeStaticFiles(StaticFiles):
    def __init__(self, directory: str) -> None:
        super().__init__(directory=directory, follow_symlink=False)

    async def get_response(self, path: str, scope: Scope) -> Response:
        # The path as the client sent it (percent-decoded once by the server), before the
        # normalisation StaticFiles applies: "a/../b" is refused, not quietly turned into "b".
        route_path, root = scope["path"], scope.get("root_path", "")
        if root and route_path.startswith(root):
            route_path = route_path[len(root):]
        if not is_safe_relative(route_path.removeprefix("/")):
            raise HTTPException(status_code=404)
        if path == PAGE_INFO and scope["method"] in ("GET", "HEAD"):
            info = page_info(app_state(scope["app"]).settings, str(self.directory))
            # no-store: a server restarted with another model must not leave a stale line on the page.
            return JSONResponse(info, headers={"cache-control": "no-store"})
        return await super().get_response(path, scope)
