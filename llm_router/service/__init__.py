"""The HTTP service: ``llm-router serve`` (needs the ``[serve]`` extra).

:mod:`.app` is the FastAPI app, :mod:`.middleware` its plain-ASGI guard (body limit, token,
admission), :mod:`.prometheus` its counters and :mod:`.page` the Gradio page at ``/ui``.
"""

import os

# A service must not phone home (on an air-gapped host such look-ups hang or fail, elsewhere
# they tell third parties that it runs): Gradio's analytics and version check, and the
# Hugging Face hub's telemetry and look-ups, are off before any of them is imported. A value
# the user set explicitly is left as it is.
for _variable, _value in (
    ("GRADIO_ANALYTICS_ENABLED", "False"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("HF_HUB_OFFLINE", "1"),
):
    os.environ.setdefault(_variable, _value)
