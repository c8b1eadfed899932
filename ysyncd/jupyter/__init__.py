"""JupyterLab real-time collaboration: document rooms bound to Jupyter files.

- :mod:`ysyncd.jupyter.documents`: room ids, jupyter_ydoc document models and
  the deterministic build of a document from a file's content (pure, no I/O);
- :mod:`ysyncd.jupyter.files`: where files are read and written (a shared
  volume or a Jupyter server's Contents API) and how file ids become paths;
- :mod:`ysyncd.jupyter.extension`: the Jupyter server extension that serves
  JupyterLab's collaboration endpoints by piping them to ysyncd (enable it as
  ``ysyncd.jupyter``; it needs jupyter_server and jupyter_server_fileid).

Needs the ``jupyter`` extra (jupyter-ydoc, nbformat, httpx).
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Where jupyter_server finds the extension enabled as ``ysyncd.jupyter``.

    Imported only here: ysyncd itself never needs jupyter_server.
    """
    from ysyncd.jupyter.extension import YsyncdExtension

    return [{"module": "ysyncd.jupyter.extension", "app": YsyncdExtension}]
