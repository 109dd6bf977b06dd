"""The web page at ``/ui`` (Gradio, mounted in the service app).

A person pastes (or picks) an abstract and sees, side by side: the router's answer with its
arXiv name, group and calibrated confidence, which classifier answered and why, the LLM's
answer when a key is set beside the local model's top 5 it was combined with (and which of the
two the combination followed), each local model's top 5 as a bar chart, latency and cost. Bad
input is a message on the page, never a traceback. With ``LLM_ROUTER_SERVER_TOKEN`` set the
page asks for the token itself.

The page does not phone home: ``llm_router.service`` switches Gradio's analytics and
version check off before Gradio is imported, and the Blocks say so too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import gradio as gr
import pandas as pd
from fastapi import FastAPI

from llm_router.errors import ClassifierError, RouterError
from llm_router.inputs import prepare_text
from llm_router.registry import local_models
from llm_router.router import Router
from llm_router.schemas import Classification
from llm_router.service.middleware import ServerToken
from llm_router.service.prometheus import ServiceMetrics
from llm_router.settings import Settings

logger = logging.getLogger(__name__)

# Written for this page (not taken from any data set), one per arXiv group it shows off.
EXAMPLES = [
    "We propose a convolutional network that segments street scenes into semantic classes in "
    "real time. A lightweight decoder fuses features from several scales, and a boundary loss "
    "sharpens object edges. On a standard driving benchmark the method improves mean "
    "intersection-over-union while running at sixty frames per second on a single GPU.",
    "We compute the two-loop corrections to the Higgs boson production cross section through "
    "gluon fusion in the Standard Model, including the full top-quark mass dependence. The "
    "corrections are sizeable at high transverse momentum and reduce the scale uncertainty "
    "of the prediction for the Large Hadron Collider.",
    "We prove existence and uniqueness of weak solutions to a class of nonlinear parabolic "
    "equations with measure data on bounded domains, and show that the solutions depend "
    "continuously on the data in a suitable Sobolev norm.",
    "Single-cell RNA sequencing of the developing mouse cortex reveals transcriptional states "
    "of progenitor cells. A stochastic model of gene regulation reproduces the observed "
    "switching between states and predicts how its rates depend on cell size.",
]


def _answer_markdown(result: Classification) -> str:
    lines = [
        f"## {result.label}",
        f"**{result.name}**" + (f" · {result.group}" if result.group else ""),
        "",
        f"- confidence: **{result.confidence:.0%}** (the calibrated probability that this "
        "label is right)",
        f"- answered by **{result.source}**"
        + (f" ({result.model})" if result.model else "")
        + (" from the cache" if result.cached else ""),
    ]
    if result.fallback_reason:
        lines.append(f"- the LLM was not used: `{result.fallback_reason}`")
    if result.decision:
        lines.append(f"- decided: `{result.decision}` (strategy `{result.strategy}`)")
    lines.append(f"- latency: {result.latency_ms:.1f} ms")
    usage = result.usage
    if usage is not None and usage.requests:
        cost = "unknown" if usage.cost_usd is None else f"${usage.cost_usd:.6f}"
        lines.append(
            f"- LLM: {usage.requests} request(s), {usage.prompt_tokens} + "
            f"{usage.completion_tokens} tokens, cost {cost}"
        )
    return "\n".join(lines)


_FOLLOWED = {
    "agree": "the LLM and the local model agree",
    "llm": "followed the **LLM**",
    "local": "followed the **local model** (the LLM's answer was outweighed)",
    "neither": "neither's first choice: their evidence together points elsewhere",
}


def _llm_markdown(result: Classification, settings: Settings) -> str:
    answer = result.llm_answer
    if result.source == "llm" and answer is not None:
        own = (
            f"its own measured reliability {answer.confidence:.0%}"
            if answer.confidence is not None
            else "not calibrated for this setup (python -m eval --calibrate)"
        )
        lines = [f"**LLM ({result.model}):** `{answer.label}` — {own}"]
        if result.local_candidates:
            top = ", ".join(f"`{c.label}` {c.score:.0%}" for c in result.local_candidates)
            lines.append(f"**Local model's top 5:** {top}")
        if result.followed:
            lines.append(f"**Combined:** {_FOLLOWED.get(result.followed, result.followed)}")
        return "\n\n".join(lines)
    if result.source == "llm":
        return f"**LLM ({result.model}):** `{result.label}` — {result.name}"
    if settings.api_key is None:
        return "**LLM:** skipped, no API key is set (`OPENROUTER_API_KEY`)."
    return f"**LLM:** no answer (`{result.fallback_reason}`); a local model answered instead."


def _top5(router: Router, name: str, text: str) -> pd.DataFrame | None:
    for classifier in router.classifiers:
        if classifier.name != name or not callable(getattr(classifier, "get", None)):
            continue
        try:
            model = classifier.get()  # type: ignore[attr-defined]
            answer: Classification = model.classify_batch([text], top_k=5)[0]
        except (ClassifierError, AttributeError):
            return None
        return pd.DataFrame(
            {
                "label": [c.label for c in answer.candidates],
                "probability": [round(c.score, 4) for c in answer.candidates],
            }
        )
    return None


# Runs work under the service's admission control (in its worker threads); None when the
# service is full.
Admit = Callable[[Callable[[], Any]], Awaitable[Any]]


def build_page(
    get_router: Callable[[], Router | None],
    settings: Settings,
    token: ServerToken,
    metrics: ServiceMetrics | None = None,
    admit: Admit | None = None,
) -> gr.Blocks:
    """The Blocks of the page; ``get_router`` returns the service's router once it is built;
    ``admit`` puts each classification under the service's limits, as /v1 requests are."""

    trained = _trained_kinds()
    hidden = [gr.update(visible=False)] * len(trained)

    async def run(text: str, given_token: str = "") -> tuple[Any, ...]:
        if admit is None:
            answer: tuple[Any, ...] = await asyncio.to_thread(work, text, given_token)
            return answer
        admitted = await admit(lambda: work(text, given_token))
        if admitted is None:
            busy = "⚠️ The service is busy (LLM_ROUTER_SERVER_MAX_INFLIGHT); try again shortly."
            return (busy, "", *hidden)
        result: tuple[Any, ...] = admitted
        return result

    def work(text: str, given_token: str) -> tuple[Any, ...]:
        if not token.matches(given_token or ""):
            return ("⚠️ Enter the server's token to classify.", "", *hidden)
        router = get_router()
        if router is None:
            return ("⚠️ The service is still starting; try again in a moment.", "", *hidden)
        try:
            result = router.classify(text)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, RouterError):
                return (f"⚠️ {exc}", "", *hidden)
            return (f"⚠️ {exc}. Paste an abstract first.", "", *hidden)
        except RouterError as exc:
            if metrics is not None:
                metrics.failed(exc)
            return (f"⚠️ No classifier could answer: {exc}", "", *hidden)
        if metrics is not None:
            metrics.classified(result)
        plots = []
        for name in trained:
            frame = _top5(router, name, prepare_text(text, router.max_input_chars))
            if frame is None:
                plots.append(gr.update(visible=False))
            else:
                plots.append(gr.update(value=frame, visible=True))
        return (_answer_markdown(result), _llm_markdown(result, settings), *plots)

    with gr.Blocks(title="llm-router", analytics_enabled=False) as page:
        gr.Markdown(
            "# llm-router\nPaste an arXiv abstract (title first, if you have one) and press "
            "**Classify**: the router's answer, the LLM's, and each local model's top 5."
        )
        with gr.Row():
            with gr.Column(scale=3):
                text = gr.Textbox(label="Abstract", lines=10, elem_id="abstract")
                secret = gr.Textbox(label="Server token", type="password", visible=token.required)
                button = gr.Button("Classify", variant="primary", elem_id="classify")
                gr.Examples(EXAMPLES, inputs=text, label="Examples")
            with gr.Column(scale=2):
                answer = gr.Markdown(elem_id="answer")
                llm = gr.Markdown(elem_id="llm")
        with gr.Row():
            plots = [
                gr.BarPlot(
                    x="label",
                    y="probability",
                    title=f"{name}: top 5",
                    y_lim=[0, 1],
                    sort="-y",
                    visible=False,
                    elem_id=f"top5-{name}",
                )
                for name in trained
            ]
        button.click(run, inputs=[text, secret], outputs=[answer, llm, *plots])
        text.submit(run, inputs=[text, secret], outputs=[answer, llm, *plots])
    blocks: gr.Blocks = page
    return blocks


def _trained_kinds() -> tuple[str, ...]:
    """Each trained local model gets a top-5 plot (the registry says which kinds exist)."""
    models = local_models()
    return models.trained if models is not None else ()


def mount_page(
    app: FastAPI,
    get_router: Callable[[], Router | None],
    settings: Settings,
    token: ServerToken,
    metrics: ServiceMetrics | None = None,
    admit: Admit | None = None,
) -> None:
    """Mount the page at ``/ui``."""
    page = build_page(get_router, settings, token, metrics, admit)
    gr.mount_gradio_app(app, page, path="/ui")
