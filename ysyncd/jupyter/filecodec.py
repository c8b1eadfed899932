"""A file's bytes and a Contents model's content, as FileContentsManager has them.

:func:`encode` gives the bytes ``FileContentsManager.save`` writes for a
model's content, :func:`decode` the content ``FileContentsManager.get``
reads from a file's bytes. Notebooks go through nbformat, imported on first
use. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import importlib
from collections.abc import Mapping
from typing import Any

from ysyncd.jupyter.filebase import BadFile, text_content

__all__ = ["decode", "encode"]


def _nbformat() -> Any:
    """The nbformat module, imported on first use.

    Importing it takes about a second (jsonschema's format checkers), which
    only deployments with notebooks on a volume should pay. Its functions
    are untyped; Any keeps that here.
    """
    return importlib.import_module("nbformat")


def encode(file_format: str, file_type: str, content: Any) -> bytes:
    """The bytes FileContentsManager.save writes for a model's content.

    Raises:
        BadFile: the content cannot be written as this format and type.
    """
    text: str
    if file_type == "notebook":
        if not isinstance(content, Mapping) or not isinstance(
            content.get("nbformat"), int
        ):
            # nbformat would write anything, even with no version (as v1).
            raise BadFile("a notebook's content must be a JSON object with nbformat")
        nbformat = _nbformat()
        try:
            text = nbformat.writes(
                nbformat.from_dict(content), version=nbformat.NO_CONVERT
            )
        except Exception as exc:
            # nbformat raises whatever its converters meet; it only logs
            # schema errors (and jupyter_server writes such notebooks anyway).
            raise BadFile(f"not a notebook: {exc}") from exc
        if not text.endswith("\n"):
            text += "\n"  # nbformat.write adds it; writes does not
    elif file_format == "text":
        if not isinstance(content, str):
            raise BadFile("text content must be a string")
        text = content
    elif file_format == "base64":
        if isinstance(content, bytes):
            return content
        if not isinstance(content, str):
            raise BadFile("base64 content must be a string or bytes")
        try:
            return base64.decodebytes(content.encode("ascii"))
        except (UnicodeError, binascii.Error) as exc:
            raise BadFile(f"not base64: {exc}") from None
    else:
        raise BadFile(f"format {file_format!r} is for notebooks only")
    try:
        return text.encode("utf-8")
    except UnicodeError as exc:
        raise BadFile(f"not encodable as UTF-8: {exc}") from None


def decode(raw: bytes, file_format: str, file_type: str, where: str) -> Any:
    """A model's content for the file's bytes, as FileContentsManager.get.

    Raises:
        BadFile: the bytes cannot be read as this format and type.
    """
    if file_type == "notebook":
        nbformat = _nbformat()
        try:
            text = raw.decode("utf-8")
            # Schema errors are logged, not raised, as by jupyter_server.
            nb = nbformat.reads(text, as_version=4, capture_validation_error={})
        except Exception as exc:
            raise BadFile(f"unreadable notebook {where}: {exc}") from exc
        # The notary marks code cells of a notebook whose signature it cannot
        # check as untrusted; ysyncd has no notary, so all are.
        for cell in nb.get("cells", ()):
            if cell.get("cell_type") == "code":
                cell.setdefault("metadata", {})["trusted"] = False
        return nb
    if file_format == "text":
        try:
            return text_content(raw.decode("utf-8"), file_type)
        except UnicodeError:
            raise BadFile(f"{where} is not UTF-8 encoded") from None
    if file_format == "base64":
        return base64.encodebytes(raw).decode("ascii")
    raise BadFile(f"format {file_format!r} is for notebooks only")
