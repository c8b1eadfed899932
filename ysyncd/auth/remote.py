"""Asking another server (JupyterHub, a Jupyter server) whether to let a user in.

Answers are cached by a digest of the credentials for ``cache_seconds``, and
concurrent checks of the same credentials share one request: JupyterLab opens
several sockets at once with the same token. Only answers are cached; a
server that cannot be reached gives 503 every time until it can.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from ysyncd.auth.base import VerdictCache
from ysyncd.errors import AuthUnavailable, Unauthorized

__all__ = ["Answer", "Remote"]

log = logging.getLogger("ysyncd.auth")

TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON body from a 200; None when the credentials were refused."""

    body: dict[str, Any] | None


class Remote:
    rechecks = True

    def __init__(self, cache_seconds: float) -> None:
        # The deciding servers are internal: no proxies from the environment.
        self.client = httpx.AsyncClient(
            timeout=TIMEOUT_S, trust_env=False, follow_redirects=False
        )
        self.cache: VerdictCache[Answer] = VerdictCache(cache_seconds)
        self._inflight: dict[str, asyncio.Future[Answer]] = {}

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get_json(
        self, key: str, url: str, headers: dict[str, str]
    ) -> dict[str, Any]:
        """The JSON answer of ``GET url``, from the cache when it is fresh.

        Raises:
            Unauthorized: the server refused the credentials (401 or 403).
            AuthUnavailable: no answer, or one that is neither 200 nor a refusal.
        """
        answer = self.cache.get(key)
        if answer is None:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._ask(url, headers))
                self._inflight[key] = pending
                pending.add_done_callback(lambda done: self._settle(key, done))
            answer = await asyncio.shield(pending)
        if answer.body is None:
            raise Unauthorized("the token or cookie was refused")
        return answer.body

    def _settle(self, key: str, done: asyncio.Future[Answer]) -> None:
        # Here rather than in the waiters: they may all have hung up.
        del self._inflight[key]
        if not done.cancelled() and done.exception() is None:
            self.cache.put(key, done.result())

    async def _ask(self, url: str, headers: dict[str, str]) -> Answer:
        # Log the server only: the URL and headers may carry credentials.
        server = httpx.URL(url).copy_with(query=None)
        try:
            response = await self.client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            log.error("auth: %s did not answer: %s", server, type(exc).__name__)
            raise AuthUnavailable("the auth server did not answer") from None
        if response.status_code in (401, 403):
            return Answer(None)
        if response.status_code != 200:
            log.error("auth: %s answered %d", server, response.status_code)
            raise AuthUnavailable(f"the auth server answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:  # not JSON, or not even UTF-8
            body = None
        if not isinstance(body, dict):
            log.error("auth: %s answered something that is not a JSON object", server)
            raise AuthUnavailable("the auth server's answer is not JSON")
        return Answer(body)
