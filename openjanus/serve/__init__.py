"""`openjanus serve`: an OpenAI-compatible HTTP server and a web page over the engine.

Needs the `serve` extra (`pip install -e ".[serve]"`); `create_app` builds the ASGI app for a
pipeline, so tests run it in-process or on a socket.
"""
