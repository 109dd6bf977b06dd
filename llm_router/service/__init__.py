"""The HTTP service: ``llm-router serve`` (needs the ``[serve]`` extra).

:mod:`.app` is the FastAPI app, :mod:`.middleware` its plain-ASGI guard (body limit, token,
admission), :mod:`.prometheus` its counters and :mod:`.page` the Gradio page at ``/ui``.
"""
