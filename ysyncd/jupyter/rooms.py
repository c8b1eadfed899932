"""A Jupyter document room kept in step with its file: load, save, outside edits.

The room's history lives in ysyncd's store like any room's; the file is where
JupyterLab users expect their work. :class:`FileBinding` joins the two:

- **Load.** A room with no stored history is built from the file
  deterministically (the same content gives the same Yjs items, so a client
  holding an older build of it merges without duplicating cells). A room
  whose history disagrees with the file (edited while ysyncd was away) gets
  the file's content as a granular edit on top.
- **Save.** After ``save_delay`` seconds without changes, and only when the
  content differs from what was last saved, the file is written and
  ``state.dirty``/``state.hash`` are set. A client's "save" request saves at
  once. Clients whose awareness says ``autosave: false`` are respected as in
  jupyter_server_ydoc: autosave runs unless every client turned it off.
- **Outside edits.** The file is polled every ``poll_interval`` seconds, and
  at once when :meth:`FileBinding.poke` says it changed. A change made
  outside is merged as a CRDT edit made *from the last saved version*, so
  edits in the room that are not saved yet survive next to it
  (jupyter_server_ydoc reloads the file and drops them). A rename updates
  ``state.path``; a deleted file turns new connections away with 4404.
- **Many nodes.** With a backplane, every node serving the room keeps its doc
  in step, but only the holder of the room's *lease* reads outside edits into
  it, polls and saves the file, so that no save is written twice and no
  outside edit merged twice. Another node takes the lease within seconds of
  its holder's death, and first brings its view of the file up to date.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pycrdt import Doc

from ysyncd.backplane.messages import LEASE_RENEW
from ysyncd.cluster import Lease
from ysyncd.errors import YsyncdError
from ysyncd.jupyter import documents
from ysyncd.jupyter.files import BadFile, FileGone, Files, FileState
from ysyncd.jupyter.roomids import Target
from ysyncd.room import Room
from ysyncd.roomtypes import RoomFailed

__all__ = ["FileBinding", "SaveStatus", "Target"]

log = logging.getLogger("ysyncd.jupyter")


SaveStatus = str  # "success" | "skipped" | "failed", as the frontend expects


class FileBinding:
    """Keeps one room and one file in step (see the module docs)."""

    def __init__(
        self,
        target: Target,
        files: Files,
        task_group: TaskGroup,
        *,
        save_delay: float,
        poll_interval: float,
        autosave_wanted: Callable[[Room], bool],
        lease_for: Callable[[str], Lease] | None = None,
    ) -> None:
        self.target = target
        self.files = files
        self.save_delay = save_delay
        self.poll_interval = poll_interval
        self._autosave_wanted = autosave_wanted
        self._tg = task_group
        self._room: Room | None = None
        self._model: Any = None
        self.path = ""
        #: Set once the file is gone: new connections get 4404.
        self.gone = False
        self._file: FileState | None = None
        # Digest of the content the file holds, as last read or written.
        self._saved = ""
        self._base = b""  # the doc as of that content, to merge outside edits onto
        self._wake = asyncio.Event()
        self._poked = asyncio.Event()
        self._lock = asyncio.Lock()  # one load, save or merge at a time
        self._saving = False
        self._scope = anyio.CancelScope()
        self._subscription: Any = None
        self._lease_for = lease_for
        self._lease: Lease | None = None
        #: Whether this node saves and polls the file (always, on its own).
        self.leading = lease_for is None

    # -- set-up and tear-down, called by the registry ------------------------------

    async def setup(self, room: Room) -> None:
        """Bind ``room`` to its file; raises FileGone, BadFile, FilesUnavailable."""
        t = self.target
        path = await self.files.resolve(t.namespace, t.file_id)
        if path is None:
            raise FileGone(f"no file has the id {t.file_id!r}")
        self.path = path
        loaded = await self.files.read(t.namespace, path, t.file_format, t.file_type)
        self._room = room
        # Before the model exists: some models edit the doc as they are made.
        room.record_edits()
        self._model = documents.model(t.file_type, room.doc)
        unsaved = False
        if self._lease_for is not None:
            self._lease = self._lease_for(room.key)
            self.leading = await self._lease.hold()
            if self.leading:
                log.info("%s: this node saves the file", path)
        if room.doc.get_state() == b"\x00":
            # The same content gives the same items: every node may do it.
            room.apply_trusted(
                documents.deterministic_update(t.file_type, loaded.content)
            )
        elif self.leading and self._content() != self._normal(loaded.content):
            # (Without the lease, the holder reads the file into the room.)
            if self._model.ystate.get("hash") == loaded.state.hash:
                # The file is as this room last loaded or saved it: the room
                # is ahead, with edits ysyncd stopped before saving. Keep them.
                log.info("%s: the room holds edits not saved yet; keeping them", path)
                unsaved = True
            else:
                log.info("%s changed while its room was away; merging", path)
                documents.set_content(self._model, loaded.content)
        self._remember(loaded.state)
        self._set_state(path=path, dirty=unsaved, hash=loaded.state.hash)
        if unsaved:
            # Save them now: outside edits are merged from the last saved
            # version, which must then be the room's, not an older file.
            self._saved = documents.content_digest(self._normal(loaded.content))
            if await self._save_locked() != "success":
                log.warning("%s: the room's unsaved edits could not be saved", path)
        room.document = self
        self._subscription = room.doc.observe(self._on_change)
        self._tg.start_soon(self._run)

    def _content(self) -> Any:
        """The document's content, repaired first if it cannot be read.

        Any client may leave the shared types in a shape jupyter_ydoc cannot
        read (a string ``nbformat``, a cell without ``cell_type``); unrepaired,
        the room could never be saved or loaded again. Raises BadFile if the
        repair did not do.
        """
        # (get() itself renames duplicated cell ids in place: the room
        # records that edit like any other.)
        try:
            return documents.content(self._model)
        except BadFile as exc:
            log.warning("%s: %s; repairing it", self.path, exc)
        documents.repair(self._model)
        return documents.content(self._model)

    def rebind(self, doc: Doc[Any]) -> None:
        # A rebuild swapped the room's doc: model and observer follow it (the
        # old doc is dropped with its subscription).
        self._model = documents.model(self.target.file_type, doc)
        self._subscription = doc.observe(self._on_change)

    def stop(self) -> None:
        self._scope.cancel()
        if self._lease is not None and self.leading:
            self.leading = False
            self._tg.start_soon(self._lease.release)
        if self._room is not None and self._subscription is not None:
            self._room.doc.unobserve(self._subscription)
            self._subscription = None

    def poke(self) -> None:
        """The file may have changed (saved, renamed, deleted): check it now."""
        self._poked.set()

    async def save_if_changed(self) -> None:
        # Before eviction: after a save under way (not "skipped" for it, as a
        # client's request is), so the last edits are written.
        if self._room is not None and not self.gone and self.leading:
            await self._save_locked()

    # -- saving -------------------------------------------------------------------

    async def save(self) -> SaveStatus:
        """Write the document if it differs from the file; set dirty and hash."""
        if self._room is None or self.gone:
            return "failed"
        if not self.leading:
            # Another node holds the file: it saves what reaches it (every
            # committed edit does) once its autosave delay has passed.
            return "skipped"
        if self._saving:
            return "skipped"  # a save is under way, as jupyter_server_ydoc says
        self._saving = True
        try:
            return await self._save_locked()
        finally:
            self._saving = False

    async def _save_locked(self) -> SaveStatus:
        async with self._lock:  # after any load, poll or merge under way
            room = self._room
            assert room is not None
            try:
                # Follow a rename first: writing to the old path would bring
                # a moved file back (or take the room for gone).
                await self._check_file()
                # Never a document half-way through a big update (which may
                # yet be undone); nothing awaits between this and the read.
                await room.settle()
                content = self._content()
                digest = documents.content_digest(content)
                if digest == self._saved:
                    return "success"
                # The doc as written: edits that come during the write are
                # not in the file, so they must not count as saved.
                written = room.doc.get_state()
                base = room.doc.get_update()
                t = self.target
                state = await self.files.write(
                    t.namespace, self.path, t.file_format, t.file_type, content
                )
            except FileGone:
                self._mark_gone()
                return "failed"
            except RoomFailed:
                return "failed"  # its peers are gone; the next load saves
            except YsyncdError as exc:
                log.error("saving %s failed: %s", self.path, exc)
                return "failed"
            self._saved, self._file, self._base = digest, state, base
            edited = room.doc.get_state() != written
            # Set even when False already: JupyterLab clears the dirty mark
            # of its (locally dirty) model only on a change event for it.
            self._set_state(dirty=edited, hash=state.hash, force=("dirty",))
            if edited:
                self._wake.set()  # autosave what came meanwhile
            log.debug("saved %s", self.path)
            return "success"

    def _on_change(self, _event: Any) -> None:
        self._wake.set()

    async def _run(self) -> None:
        with self._scope:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._autosave)
                    tg.start_soon(self._poll)
                    if self._lease is not None:
                        tg.start_soon(self._keep_lease, self._lease)
            except Exception:
                # Runs in the server's task group: a bug here must cost this
                # room its file binding, not every room its server.
                log.exception(
                    "%s: following the file failed; autosave stops", self.path
                )

    async def _autosave(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Debounce: save once save_delay passes without another change.
            while True:
                with anyio.move_on_after(self.save_delay) as quiet:
                    await self._wake.wait()
                    self._wake.clear()
                if quiet.cancelled_caught:
                    break
            room = self._room
            if room is not None and self.leading and self._autosave_wanted(room):
                await self.save()

    # -- many nodes ---------------------------------------------------------------

    async def _keep_lease(self, lease: Lease) -> None:
        while True:
            await anyio.sleep(LEASE_RENEW)
            was, self.leading = self.leading, await lease.hold()
            if self.leading and not was:
                log.info("%s: this node now saves the file", self.path)
                await self._take_over()
            elif was and not self.leading:
                log.warning("%s: lost the file's lease; another node saves", self.path)

    async def _take_over(self) -> None:
        """Bring this node's view of the file up to date, then save if due.

        The last holder saved since this node read the file. If the file is
        the one the room last saved or loaded (``state.hash`` says which), its
        content is the room's as of then: remember it, and autosave whatever
        came later. Otherwise it was edited outside: merge it, onto the room
        as it is now.
        """
        async with self._lock:
            t = self.target
            try:
                await self._follow_rename()
                state = await self.files.stat(t.namespace, self.path)
                if state is None:
                    raise FileGone(f"{self.path} was deleted")
                loaded = await self.files.read(
                    t.namespace, self.path, t.file_format, t.file_type
                )
            except FileGone:
                self._mark_gone()
                return
            except YsyncdError as exc:
                log.warning(
                    "%s: reading it after taking over failed: %s", self.path, exc
                )
                return
            assert self._room is not None
            self._base = self._room.doc.get_update()
            if self._model.ystate.get("hash") == loaded.state.hash:
                self._file = loaded.state
                self._saved = documents.content_digest(self._normal(loaded.content))
            else:
                # Unknown to the merge, so that it takes the file's content.
                self._file, self._saved = None, ""
                await self._merge_outside_edits()
        self._wake.set()

    # -- outside edits ------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            with anyio.move_on_after(self.poll_interval):
                await self._poked.wait()
            self._poked.clear()
            if not self.leading:
                continue
            async with self._lock:  # after a save under way, if any
                try:
                    await self._check_file()
                except FileGone:
                    self._mark_gone()
                    return
                except YsyncdError as exc:
                    log.warning("checking %s failed: %s", self.path, exc)

    async def _check_file(self) -> None:
        try:
            await self._follow_rename()
            await self._merge_outside_edits()
        except FileGone:
            # The file id may have been read before the id service saw a
            # rename (Jupyter updates it just after): gone only if it agrees.
            if not await self._follow_rename():
                raise
            await self._merge_outside_edits()

    async def _follow_rename(self) -> bool:
        """Follow the file id to its path; True if the path changed."""
        t = self.target
        path = await self.files.resolve(t.namespace, t.file_id)
        if path is None:
            raise FileGone(f"file id {t.file_id!r} is gone")
        if path == self.path:
            return False
        if await self.files.stat(t.namespace, path) is None:
            # Moved where it cannot be served (a hidden path, which files
            # report as missing), or gone again: not followed, so the room
            # never names that path to its clients.
            raise FileGone(f"file id {t.file_id!r} moved out of reach")
        log.info("%s was renamed to %s", self.path, path)
        self.path = path
        self._set_state(path=path)
        return True

    async def _merge_outside_edits(self) -> None:
        t = self.target
        state = await self.files.stat(t.namespace, self.path)
        if state is None:
            raise FileGone(f"{self.path} was deleted")
        if self._file is not None and state.hash == self._file.hash:
            return
        loaded = await self.files.read(
            t.namespace, self.path, t.file_format, t.file_type
        )
        if documents.content_digest(self._normal(loaded.content)) == self._saved:
            self._file = loaded.state  # touched, or written back as it was
            # Other bytes may hold the same content: the hash is the file's.
            self._set_state(hash=loaded.state.hash)
            return
        log.info("%s was changed outside; merging it into the room", self.path)
        # Replay the outside change onto the last saved version, then merge
        # that edit: unsaved edits in the room stay, as concurrent ones.
        base: Doc[Any] = Doc()
        base.apply_update(self._base)
        before = base.get_state()
        documents.set_content(documents.model(t.file_type, base), loaded.content)
        assert self._room is not None
        self._room.apply_trusted(base.get_update(before))
        self._file, self._base = loaded.state, base.get_update()
        self._saved = documents.content_digest(self._normal(loaded.content))
        self._set_state(hash=loaded.state.hash)

    # -- helpers ------------------------------------------------------------------

    def _normal(self, file_content: Any) -> Any:
        return documents.normalize(self.target.file_type, file_content)

    def _remember(self, state: FileState) -> None:
        """The room's content is now the file's (just loaded)."""
        assert self._room is not None
        self._saved = documents.content_digest(self._content())
        self._file = state
        self._base = self._room.doc.get_update()

    def _set_state(self, force: tuple[str, ...] = (), **values: Any) -> None:
        state = self._model.ystate
        # One transaction: one recorded edit (see Room.record_edits).
        with self._model.ydoc.transaction():
            for key, value in values.items():
                if key in force or state.get(key) != value:
                    state[key] = value

    def _mark_gone(self) -> None:
        if not self.gone:
            log.info("%s is gone; new connections get 4404", self.path)
        self.gone = True
