"""Point-in-time restore as a forward edit (pure: no I/O).

Bringing a room back to how it was at a moment must not rewrite history:
clients hold the later edits, and would bring them back. So the restore is
made as new edits that undo the later ones, the way an undo button does it:
the rows up to the moment are replayed into a document, the later rows on
top of it under an UndoManager (each row one step), and every step is undone.
What that adds to the document is the restore: one update, applied to the
room like a client's, which every client merges without a reload, and which
a later restore can itself undo.

The result is checked by content: the document after the restore must equal
the document as it was (its roots, read as rendering.py reads them), or no
update is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pycrdt import Doc, UndoManager

from ysyncd.errors import YsyncdError
from ysyncd.rendering import root_types
from ysyncd.store.snapshot import doc_from_updates

__all__ = ["RestoreFailed", "restoring_update"]


class RestoreFailed(YsyncdError):
    """The undo did not give back the document as it was."""


def restoring_update(
    updates: Sequence[bytes],
    times: Sequence[float | None],
    moment: float,
    *,
    skip: frozenset[str] = frozenset(),
) -> bytes | None:
    """The update that brings the document of ``updates`` back to ``moment``.

    ``times`` are the rows' commit times (None: the snapshot, or rows older
    than the times kept, all before any timed row). Roots named in ``skip``
    are left as they are now (a Jupyter room's ``state``). None when nothing
    was committed after ``moment``.

    Raises:
        RestoreFailed: the undo gave another document than the one at
            ``moment`` (checked root by root).
    """
    earlier = [
        u for t, u in zip(times, updates, strict=True) if t is None or t <= moment
    ]
    later = [
        u for t, u in zip(times, updates, strict=True) if t is not None and t > moment
    ]
    if not later:
        return None
    types = {
        name: kind
        for name, kind in root_types(doc_from_updates(updates).get_update()).items()
        if name not in skip
    }
    doc: Doc[Any] = Doc()
    roots = [doc.get(name, type=kind) for name, kind in types.items()]
    doc.apply_update(doc_from_updates(earlier).get_update())
    undo = UndoManager(scopes=roots, capture_timeout_millis=0)
    for update in later:
        doc.apply_update(update)
    now = doc.get_state()
    # Each later row is one step at most: bounded by their count.
    for _ in range(len(later) + 1):
        if not undo.can_undo():
            break
        undo.undo()
    wanted = doc_from_updates(earlier)
    for name, kind in types.items():
        if _plain(doc.get(name, type=kind)) != _plain(wanted.get(name, type=kind)):
            raise RestoreFailed(f"undoing the later edits did not restore {name!r}")
    update = doc.get_update(now)
    return None if update == b"\x00\x00" else bytes(update)


def _plain(root: Any) -> Any:
    to_py = getattr(root, "to_py", None)
    return to_py() if to_py is not None else str(root)
