"""An OpenAI-compatible HTTP server and web page over a `JanusPipeline` (needs the `serve` extra).

    from openjanus.serve import create_app, ServeConfig
"""

from openjanus.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
