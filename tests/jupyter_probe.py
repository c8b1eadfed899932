"""A small Jupyter server extension that uses collaboration as others do.

Loaded into the test's real Jupyter server (``tests.jupyter_probe``), it finds
the collaboration backend the ways real extensions do, and edits documents
through ``get_document``. Its endpoints, under ``probe/``:

- ``GET probe/lookup``: how each lookup resolves (JSON);
- ``GET probe/document?path=&copy=&create=``: the notebook's cells' sources,
  or null when get_document gives None;
- ``POST probe/cell?path=`` with ``{"source": …}``: appends a code cell to
  the live notebook (``copy=False``) and keeps holding the model, as an
  extension that works on a document does;
- ``POST probe/release``: drops every model it holds.

This file is imported by the Jupyter server only, never by the tests.
"""

from __future__ import annotations

import gc
import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

HELD: dict[str, Any] = {}


def _collaboration(handler: APIHandler) -> Any:
    return handler.settings["jupyter_server_ydoc"]


class Lookup(APIHandler):
    @web.authenticated
    def get(self) -> None:
        manager = self.serverapp.extension_manager
        apps = manager.extension_apps.get("jupyter_server_ydoc", set())
        package = manager.extensions.get("jupyter_server_ydoc")
        by_settings = self.settings.get("jupyter_server_ydoc")
        self.finish(
            json.dumps(
                {
                    "settings": type(by_settings).__name__,
                    "apps": len(apps),
                    "same": next(iter(apps), None) is by_settings,
                    "enabled": bool(package and package.enabled),
                    "disable_rtc": getattr(by_settings, "disable_rtc", None),
                }
            )
        )


class Document(APIHandler):
    @web.authenticated
    async def get(self) -> None:
        path = self.get_query_argument("path")
        model = await _collaboration(self).get_document(
            path=path,
            content_type="notebook",
            file_format="json",
            copy=self.get_query_argument("copy", "true") == "true",
            create=self.get_query_argument("create", "false") == "true",
        )
        if model is None:
            self.finish("null")
            return
        self.finish(json.dumps([str(cell["source"]) for cell in model.ycells]))


class Cell(APIHandler):
    @web.authenticated
    async def post(self) -> None:
        path = self.get_query_argument("path")
        body = json.loads(self.request.body)
        model = await _collaboration(self).get_document(
            path=path, content_type="notebook", file_format="json", copy=False
        )
        if model is None:
            raise web.HTTPError(404, "not open")
        HELD[path] = model
        model.ycells.append(
            model.create_ycell(
                {
                    "cell_type": "code",
                    "source": body["source"],
                    "metadata": {},
                    "outputs": [],
                    "execution_count": None,
                }
            )
        )
        self.finish(json.dumps([str(cell["source"]) for cell in model.ycells]))


class Release(APIHandler):
    @web.authenticated
    def post(self) -> None:
        HELD.clear()
        gc.collect()
        self.finish("{}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "tests.jupyter_probe"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base = serverapp.web_app.settings["base_url"].rstrip("/")
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (f"{base}/probe/lookup", Lookup),
            (f"{base}/probe/document", Document),
            (f"{base}/probe/cell", Cell),
            (f"{base}/probe/release", Release),
        ],
    )
