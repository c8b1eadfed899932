"""JupyterLab real-time collaboration: document rooms bound to Jupyter files.

- :mod:`ysyncd.jupyter.documents`: room ids, jupyter_ydoc document models and
  the deterministic build of a document from a file's content (pure, no I/O);
- :mod:`ysyncd.jupyter.files`: where files are read and written (a shared
  volume or a Jupyter server's Contents API) and how file ids become paths.

Needs the ``jupyter`` extra (jupyter-ydoc, nbformat, httpx).
"""
