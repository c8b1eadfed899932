"""jupyter-server-ydoc's Python API, served by ysyncd.

Extensions that build on collaboration find jupyter-server-ydoc's
``YDocExtension`` and call its ``get_document``. With ``ysyncd.jupyter``
enabled, jupyter-server-ydoc is off, so a :class:`Collaboration` takes its
place wherever extensions look:

- ``serverapp.web_app.settings["jupyter_server_ydoc"]`` (jupyterlab-chat);
- ``serverapp.extension_manager.extension_apps["jupyter_server_ydoc"]``
  (jupyter-server-nbmodel takes the one app in that set);
- ``serverapp.extension_manager.extensions["jupyter_server_ydoc"].enabled``
  (jupyterlab-chat decides at its load whether collaboration is on).

Extensions load in the order of their names, and both of those above come
before ``ysyncd.jupyter``: the stand-in is put in place when ysyncd.jupyter
is *linked*, which happens for every extension before any loads.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from jupyter_ydoc.ybasedoc import YBaseDoc
from pycrdt import Doc

from ysyncd.jupyter import documents
from ysyncd.jupyter.live import LiveDocuments
from ysyncd.jupyter.sessions import Sessions, split_room_id

__all__ = ["NAME", "Collaboration", "stand_in_for_jupyter_server_ydoc"]

log = logging.getLogger("ysyncd.jupyter.extension")

#: The extension name other extensions look collaboration up by.
NAME = "jupyter_server_ydoc"
_ARGUMENTS = (
    "You need to provide either a ``room_id`` or the ``path``, "
    "the ``content_type`` and the ``file_format``."
)


class Collaboration:
    """What ``YDocExtension`` offers other extensions (see the module)."""

    name = NAME
    app_name = "Collaboration"
    description = "Real Time Collaboration in JupyterLab, served by ysyncd"
    #: jupyterlab-chat reads it: collaboration is on.
    disable_rtc = False

    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp
        self.server_side_execution = False
        self._live: LiveDocuments | None = None
        self._sessions: Sessions | None = None

    def bind(self, live: LiveDocuments, sessions: Sessions) -> None:
        """Wire in what the extension made at its load."""
        self._live, self._sessions = live, sessions

    async def get_document(
        self,
        *,
        path: str | None = None,
        content_type: str | None = None,
        file_format: Literal["json", "text"] | None = None,
        room_id: str | None = None,
        copy: bool = True,
        create: bool = False,
    ) -> YBaseDoc | None:
        """The shared model of a document, as jupyter-server-ydoc gives it.

        Name the room by ``room_id`` (``format:type:file_id``) or by ``path``,
        ``content_type`` and ``file_format``; anything else is a ValueError.
        A room that is not open in this server gives None, unless ``create``.
        With ``copy`` (the default), a detached snapshot; without, the live
        model: its edits go to ysyncd like any client's, and everyone's come
        back to it.

        Raises:
            ValueError: the arguments do not name one room.
            YsyncdUnavailable: ysyncd did not give the document in time.
        """
        if room_id is None:
            if path is None or content_type is None or file_format is None:
                raise ValueError(_ARGUMENTS)
            ids = self.serverapp.web_app.settings.get("file_id_manager")
            file_id = None if ids is None else ids.index(path)
            if file_id is None:
                return None  # no such file
            room_id = f"{file_format}:{content_type}:{file_id}"
        elif path is not None or content_type is not None or file_format is not None:
            raise ValueError(_ARGUMENTS)
        parts = split_room_id(room_id)
        if parts is None or self._live is None or self._sessions is None:
            return None  # a transient room (awareness), or not loaded yet
        if not create and not (
            self._sessions.is_open(room_id) or room_id in self._live
        ):
            return None
        model = await self._live.get(room_id, parts[1])
        if not copy:
            return model
        snapshot: Doc[Any] = Doc()
        snapshot.apply_update(model.ydoc.get_update())
        return documents.model_class(parts[1])(snapshot)

    def initialize_settings(self) -> None:
        """ExtensionApp's hook; the ysyncd.jupyter extension does the work."""

    def initialize_handlers(self) -> None:
        """ExtensionApp's hook; the ysyncd.jupyter extension does the work."""

    async def stop_extension(self) -> None:
        """Close the live documents (the server stops)."""
        if self._live is not None:
            self._live.close()
        if self._sessions is not None:
            self._sessions.close()


class _Point:
    """An extension point whose app is the stand-in (nothing to import)."""

    def __init__(self, app: Collaboration) -> None:
        self.app = app
        self.name = NAME
        self.module_name = __name__
        self.linked = True
        self.config: dict[str, Any] = {}

    def validate(self) -> bool:
        return True

    def link(self, serverapp: Any) -> None:
        """Linked already: the stand-in is made linked."""

    def load(self, serverapp: Any) -> None:
        """Loaded by ysyncd.jupyter."""

    async def start(self, serverapp: Any) -> None:
        """Nothing to start."""


def stand_in_for_jupyter_server_ydoc(serverapp: Any) -> Collaboration | None:
    """Register a :class:`Collaboration` as the ``jupyter_server_ydoc``
    extension; None (and nothing done) when the real one is enabled."""
    from jupyter_server.extension.manager import ExtensionPackage

    manager = serverapp.extension_manager
    current = manager.extensions.get(NAME)
    if current is not None and current.enabled:
        return None
    app = Collaboration(serverapp)
    # Made disabled (so nothing is imported), then enabled with our point.
    package = ExtensionPackage(name=NAME, enabled=False)  # type: ignore[no-untyped-call]
    package.extension_points = {NAME: _Point(app)}
    package.enabled = True
    manager.extensions[NAME] = package
    manager.linked_extensions[NAME] = True
    return app
