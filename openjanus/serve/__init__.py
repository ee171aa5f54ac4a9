"""An OpenAI-compatible HTTP server and web page over a `JanusPipeline` (needs the `serve` extra).

    from openjanus.serve import create_app, ServeConfig

Importing this package needs nothing beyond the core; the app (FastAPI) loads on first use,
so `openjanus --help` works without the extra.
"""

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name in __all__:
        from openjanus.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'openjanus.serve' has no attribute {name!r}")
