"""URL templates naming one Jupyter server per namespace.

``--jupyter-url`` and ``--delegate-url`` may hold ``{owner}`` and ``{server}``
(e.g. ``http://hub:8000/user/{owner}/{server}/``). The names come from room
paths, which whoever connects chooses, so:

- a placeholder may stand in the URL's path only. One in the scheme, the user
  info, the host or the port would let a name pick the host ysyncd sends its
  requests, and its credentials, to; such a template is refused at start;
- each name is filled in as one path segment, escaped as JupyterHub escapes
  names in its own URLs: every character but letters, digits, ``-._~`` and
  ``@`` is percent-encoded (``: / ? #`` included), so ``/user/a@b/`` reaches
  the server JupyterHub serves there. ``@`` cannot end a path's authority:
  the host is fixed before the path. ``.`` and ``..`` are refused.

Names are filled in as they are in the room's key (decoded once already):
``%61lice`` is a user of that name and becomes ``%2561lice``, never ``alice``.
"""

from __future__ import annotations

import re
import string
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["check_placeholders", "check_url_template", "fill", "has_placeholders"]

_NAMES = frozenset({"owner", "server"})


def _fields(template: str) -> set[str]:
    """The placeholders ``template`` holds (ValueError if it is malformed)."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def check_placeholders(template: str, setting: str) -> None:
    """Raise ValueError, naming ``setting``, unless ``template`` holds only
    ``{owner}`` and ``{server}`` placeholders."""
    try:
        unknown = _fields(template) - _NAMES
    except ValueError as exc:
        raise ValueError(f"{setting} {template!r}: {exc}") from None
    if unknown:
        raise ValueError(
            f"{setting} {template!r}: only {{owner}} and {{server}} may be "
            f"filled in, not {{{sorted(unknown)[0]}}}"
        )


def has_placeholders(template: str) -> bool:
    """Whether ``template`` names more than one server."""
    return bool(_fields(template))


def check_url_template(template: str, setting: str) -> None:
    """Raise ValueError, naming ``setting``, unless ``template`` is an http(s)
    base URL whose placeholders all stand in its path."""
    check_placeholders(template, setting)
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{setting} must be an http:// or https:// URL with a host, "
            f"not {template!r}"
        )
    if "{" in parts.scheme + parts.netloc:
        raise ValueError(
            f"{setting} {template!r}: {{owner}} and {{server}} may only stand "
            "in the URL's path, never in its scheme, user, host or port (a "
            "user name would choose the host)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{setting} {template!r}: a base URL has no query or fragment")


def fill(template: str, owner: str, server: str) -> str:
    """``template`` with ``owner`` and ``server`` as escaped path segments.

    An empty ``server`` (a user's default server) leaves no empty segment.

    Raises:
        ValueError: ``owner`` is empty, or either name is ``.`` or ``..``.
    """
    if not owner:
        raise ValueError("the owner is empty")
    for what, name in (("owner", owner), ("server", server)):
        if name in (".", ".."):
            raise ValueError(f"{what} {name!r} cannot be a path segment")
    url = urlsplit(
        template.format_map(
            {"owner": quote(owner, safe="@~"), "server": quote(server, safe="@~")}
        )
    )
    return urlunsplit(url._replace(path=re.sub("/{2,}", "/", url.path)))
