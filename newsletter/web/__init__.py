"""The web side: a local preview (live reload, lint, test sends, outbox) and the
public app (RFC 8058 one-click unsubscribe, archive, health check).

`create_preview_app` and `create_public_app` build Starlette apps;
`newsletter.web.server` runs them under uvicorn, in the foreground or in a thread.
"""

from __future__ import annotations

__all__ = ["create_preview_app", "create_public_app", "serve_in_thread"]


def __getattr__(name: str) -> object:
    # Lazy, so `import newsletter.web` stays cheap for commands that never serve.
    if name == "create_preview_app":
        from newsletter.web.preview import create_preview_app

        return create_preview_app
    if name == "create_public_app":
        from newsletter.web.public import create_public_app

        return create_public_app
    if name == "serve_in_thread":
        from newsletter.web.server import serve_in_thread

        return serve_in_thread
    raise AttributeError(name)
