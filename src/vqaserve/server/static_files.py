"""The web page's static files, served only from inside their folder.

Starlette's StaticFiles already resolves symlinks and refuses anything whose real path leaves the
folder. This subclass refuses suspicious requests before touching the file system at all, so the
answer to a probe is the same plain 404 whether or not the target exists: `..` segments (after
uvicorn's percent-decoding), a `%` left over from double encoding, backslashes, NUL bytes, absolute
paths, and dot-files.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope


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
        return await super().get_response(path, scope)
