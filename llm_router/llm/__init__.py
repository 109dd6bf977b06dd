"""The LLM link and its guards.

One call to the endpoint passes, in order: the disk cache (:mod:`.cache`), the circuit
breaker (:mod:`.breaker`), the budget (:mod:`.budget`), the rate limiter (:mod:`.ratelimit`)
and one HTTP attempt (:mod:`.transport`); :mod:`.client` turns the prompt into messages and
the answer into a label. :mod:`.redact` keeps keys and texts out of logs.
"""
