"""Access control: who may open which room, and whether they may write.

One provider is chosen with ``--auth`` (see the README, "Access control").
Each turns an upgrade request into a :class:`Grant` before the upgrade, or
refuses it with an HTTP status. A read-only grant makes a read-only peer:
nothing it sends is applied or stored.
"""

from __future__ import annotations

import importlib
from typing import Any

from ysyncd.auth.base import ANYONE, Authorizer, Grant, NoAuth
from ysyncd.auth.delegate import DelegateAuth
from ysyncd.auth.glue import GlueAuth
from ysyncd.auth.hub import HubAuth
from ysyncd.auth.tokenfile import TokenFile
from ysyncd.config import Settings
from ysyncd.namespaces import PathPattern

__all__ = ["ANYONE", "Authorizer", "Grant", "allowed_origins", "build_authorizer"]


def build_authorizer(settings: Settings) -> Authorizer:
    """The provider ``settings.auth`` names, configured.

    Raises:
        ValueError: the provider's settings are missing or unusable, or its
            packages (the ``[auth]`` extra) are not installed.
    """
    kind = settings.auth
    pattern = PathPattern(settings.room_pattern)
    if kind == "none":
        return NoAuth()
    if kind == "token":
        if settings.token_file is None:
            raise ValueError("--auth token needs --token-file")
        return TokenFile(settings.token_file)
    if kind == "jwt":
        jwt_auth = _extra("jwtauth", kind)
        return jwt_auth.JwtAuth(  # type: ignore[no-any-return]
            secret_file=settings.jwt_secret_file,
            public_key_file=settings.jwt_public_key_file,
        )
    if kind == "glue":
        return GlueAuth(settings.glue_secret_file, pattern)
    if kind == "jupyterhub":
        return HubAuth(settings.hub_api_url, pattern, settings.auth_cache_seconds)
    if kind == "delegate":
        return DelegateAuth(
            settings.delegate_url,
            pattern,
            settings.auth_cache_seconds,
            allowed_origins(settings),
        )
    raise ValueError(f"unknown --auth {kind!r}")


def _extra(module: str, kind: str) -> Any:
    # PyJWT comes with the [auth] extra; import it only when used.
    try:
        return importlib.import_module(f"ysyncd.auth.{module}")
    except ImportError as exc:
        raise ValueError(
            f"--auth {kind} needs {exc.name}: pip install 'ysyncd[auth]'"
        ) from exc


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The ``--allowed-origins`` list, parsed."""
    return frozenset(
        o.strip() for o in settings.allowed_origins.split(",") if o.strip()
    )
