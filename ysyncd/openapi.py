"""The OpenAPI 3.1 document of ysyncd's ``/api/`` (see api.py), served at
``GET /api/openapi.json``."""

from __future__ import annotations

import http
from typing import Any

__all__ = ["OPENAPI"]

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_ROOM = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "rows": {"type": "integer", "minimum": 0},
        "bytes": {"type": "integer", "minimum": 0},
        "last_change": {"type": ["number", "null"]},
        "peers": {"type": "integer", "minimum": 0},
    },
    "required": ["name", "rows", "bytes", "last_change", "peers"],
}
_ROOM_PARAM = {
    "name": "room",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The room's name, one segment (/ as %2F).",
}


_AT_PARAM = {
    "name": "at",
    "in": "query",
    "schema": {"type": "string"},
    "description": "The document as it was then: Unix seconds or ISO 8601.",
}
_HISTORY = {
    "type": "object",
    "properties": {
        "versions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "time": {"type": ["number", "null"]},
                    "user": {"type": ["string", "null"]},
                    "bytes": {"type": "integer", "minimum": 0},
                },
                "required": ["time", "user", "bytes"],
            },
        },
        "snapshot": {"type": "boolean"},
        "since": {"type": ["number", "null"]},
    },
    "required": ["versions", "snapshot", "since"],
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": http.HTTPStatus(code).phrase,
            "content": {"application/json": {"schema": _ERROR}},
        }
        for code in codes
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "ysyncd documents", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/rooms": {
            "get": {
                "summary": "The rooms, by name, a page at a time (admin token).",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "A page of rooms.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "rooms": {"type": "array", "items": _ROOM},
                                        "next": {"type": ["string", "null"]},
                                    },
                                    "required": ["rooms", "next"],
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/api/rooms/{room}": {
            "delete": {
                "summary": "Close the room's peers (4410) and remove its history.",
                "parameters": [_ROOM_PARAM],
                "responses": {
                    "200": {
                        "description": "Deleted.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"deleted": {"type": "string"}},
                                    "required": ["deleted"],
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 404, 503),
                },
            },
            "get": {
                "summary": "One room.",
                "parameters": [_ROOM_PARAM],
                "responses": {
                    "200": {
                        "description": "The room.",
                        "content": {"application/json": {"schema": _ROOM}},
                    },
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
        "/api/rooms/{room}/update": {
            "get": {
                "summary": "The document as one Yjs update, or the difference "
                "from a state vector.",
                "parameters": [
                    _ROOM_PARAM,
                    _AT_PARAM,
                    {
                        "name": "sv",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "A Yjs state vector, base64url.",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A Yjs update (v1).",
                        "content": {"application/octet-stream": {}},
                    },
                    **_errors(400, 401, 403, 404, 410, 503),
                },
            },
            "post": {
                "summary": "Apply a Yjs update (v1), as a client's; answered "
                "once it is durable and sent to the room's peers.",
                "parameters": [_ROOM_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Applied and durable.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "room": {"type": "string"},
                                        "changed": {"type": "boolean"},
                                    },
                                    "required": ["room", "changed"],
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 409, 413, 422, 503),
                },
            },
        },
        "/api/rooms/{room}/restore": {
            "post": {
                "summary": "Bring the room back to a time, as a forward edit "
                "every client merges; answered once it is durable.",
                "parameters": [{**_AT_PARAM, "required": True}, _ROOM_PARAM],
                "responses": {
                    "200": {
                        "description": "Restored (or nothing was newer).",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "restored": {"type": "boolean"},
                                        "at": {"type": "number"},
                                    },
                                    "required": ["restored", "at"],
                                }
                            }
                        },
                    },
                    **_errors(400, 401, 403, 404, 409, 410, 503),
                },
            }
        },
        "/api/rooms/{room}/history": {
            "get": {
                "summary": "The versions the store keeps, in commit order.",
                "parameters": [_ROOM_PARAM],
                "responses": {
                    "200": {
                        "description": "One version per stored row.",
                        "content": {"application/json": {"schema": _HISTORY}},
                    },
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/api/rooms/{room}/json": {
            "get": {
                "summary": "The document as JSON.",
                "parameters": [_ROOM_PARAM, _AT_PARAM],
                "responses": {
                    "200": {
                        "description": "The document.",
                        "content": {"application/json": {}},
                    },
                    **_errors(400, 401, 403, 404, 410, 503),
                },
            }
        },
    },
}
