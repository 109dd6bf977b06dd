"""Settings: every knob, read from ``LLM_ROUTER_*`` environment variables.

Only this module reads the environment; everything else gets a :class:`Settings` passed in.
An invalid value raises :class:`~llm_router.errors.ConfigError` with one line naming the
variable and what it accepts; an unknown ``LLM_ROUTER_*`` variable (a typo) is logged once
with the closest real name.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from llm_router.errors import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "LLM_ROUTER_"
_DEVICE = re.compile(r"^(cpu|mps|cuda(:[0-9]+)?)$")
CASCADE_THRESHOLD = 0.90
_KEY_VARIABLES = ("LLM_ROUTER_API_KEY", "OPENROUTER_API_KEY")
_warned_unknown: set[str] = set()


class Settings(BaseSettings):
    """Configuration of a :class:`~llm_router.Router`; see the README for each variable."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="forbid", populate_by_name=True, frozen=True
    )

    # The key is a SecretStr: repr, logs and model_dump show '**********'.
    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("api_key", *_KEY_VARIABLES)
    )
    base_url: HttpUrl = HttpUrl("https://openrouter.ai/api/v1")
    model: str = "mistralai/mistral-7b-instruct"
    prompt: str = "classify/v1"
    # The prompt when the LLM is offered K labels: strict (pick one of the K) by default; with
    # `shortlist_widen` it may answer "none", which asks once more with the full list. On a
    # real small model "none" came back for 81 % of rows (BENCHMARKS.md), so it is opt-in.
    shortlist_prompt: str = "shortlist/v1"
    shortlist_strict_prompt: str = "shortlist-strict/v1"
    shortlist_widen: bool = False
    prompts_dir: Path | None = None  # None: the prompts/ folder shipped with the package
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_completion_tokens: int = Field(64, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_max_wait_s: float = Field(8.0, ge=0)
    # A Retry-After longer than this is not waited for: the router falls back instead, and
    # the shared rate limiter holds back by at most this much.
    retry_after_max_s: float = Field(60.0, ge=0)
    rpm: float | None = Field(None, gt=0)
    # 401/402 switch the LLM off for `auth_cooldown_s`; `breaker_threshold` transient
    # failures in a row do so for `breaker_cooldown_s` (a circuit breaker).
    auth_cooldown_s: float = Field(300.0, ge=0)
    breaker_threshold: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, ge=0)
    max_input_chars: int = Field(6000, ge=100)
    cache: bool = True
    cache_dir: Path | None = None
    model_dir: Path = Path("models")
    # Local models in the order the router tries them (names from the registry of local
    # model kinds); None: every trained kind, the better-measured first.
    fallbacks: Annotated[tuple[str, ...] | None, NoDecode] = None
    # How the router uses the LLM: the full label list, a local top-K shortlist, or a
    # cascade that answers confident rows locally and sends the rest with the shortlist.
    strategy: Literal["llm", "shortlist", "cascade"] = "llm"
    shortlist_k: int = Field(8, ge=1, le=64)
    # From the TF-IDF model's selective-accuracy curve on the test split (BENCHMARKS.md):
    # the lowest threshold at which the rows kept locally are right at least 90 % of the time.
    # A calibration profile fitted for this endpoint (python -m eval --calibrate) replaces it
    # unless it is set explicitly.
    cascade_threshold: float = Field(CASCADE_THRESHOLD, ge=0.0, le=1.0)
    # Ask the endpoint for the answer's token log-probabilities (a calibration input).
    logprobs: bool = True
    # Use a matching calibration profile under model_dir/profiles (false: LLM answers win,
    # with the default confidence).
    calibration: bool = True
    # `python -m llm_router serve`: a bearer token for /v1/* and /docs (unset: open), the
    # largest request body, batch and number of requests worked on / waiting at once.
    server_token: SecretStr | None = None
    server_max_body_bytes: int = Field(1_000_000, ge=1)
    server_max_batch: int = Field(256, ge=1)
    server_max_inflight: int = Field(64, ge=1)
    server_max_queue: int = Field(256, ge=0)
    device: str | None = None  # torch device for BERT; None picks cuda when available
    # A local model that failed to load (not trained yet, say) is looked for again after
    # this many seconds, doubling after each failure up to five minutes.
    model_retry_s: float = Field(5.0, gt=0)
    http_referer: str | None = None  # OpenRouter's optional app attribution headers
    app_title: str | None = "llm-router"

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, values)) from None
        except SettingsError as exc:
            raise ConfigError(f"invalid LLM_ROUTER_* environment: {exc}") from None
        _warn_unknown_variables()

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _split_fallbacks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            if len(set(value)) != len(value):
                raise ValueError(f"each fallback may appear once, got {','.join(map(str, value))}")
            from llm_router.registry import local_kinds

            known = local_kinds()
            unknown = [str(v) for v in value if v not in known]
            if unknown:
                names = ", ".join(known) or "none"
                raise ValueError(f"unknown local model {', '.join(unknown)} (known: {names})")
        return value

    @field_validator("api_key", "server_token", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _check_device(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip() or None
            if value == "auto":
                return None
            if value is not None and not _DEVICE.match(value):
                raise ValueError(f"expected cpu, cuda, cuda:N, mps or auto, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_prompt(self) -> Settings:
        from llm_router.prompts import prompt_path

        prompt_path(self.prompt, self.prompts_dir)  # raises ConfigError when unknown
        if self.strategy != "llm" and self.shortlist_widen:
            prompt_path(self.shortlist_prompt, self.prompts_dir, "LLM_ROUTER_SHORTLIST_PROMPT")
        elif self.strategy != "llm":
            prompt_path(
                self.shortlist_strict_prompt,
                self.prompts_dir,
                "LLM_ROUTER_SHORTLIST_STRICT_PROMPT",
            )
        return self

    @property
    def endpoint(self) -> str:
        """The base URL as a string without a trailing slash."""
        return str(self.base_url).rstrip("/")

    def resolved_cache_dir(self) -> Path:
        """Where the disk cache lives: ``cache_dir`` or the user cache dir."""
        if self.cache_dir is not None:
            return self.cache_dir
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("llm-router")) / "llm"


def variable_names() -> dict[str, str]:
    """Every environment variable Settings reads → its field name."""
    names = {f"{PREFIX}{name.upper()}": name for name in Settings.model_fields}
    names.update(dict.fromkeys(_KEY_VARIABLES, "api_key"))
    return names


def _variable(field: str, given: dict[str, Any]) -> str:
    if field in given:
        return f"Settings({field}=...)"
    if field == "api_key":
        return " or ".join(_KEY_VARIABLES)
    return f"{PREFIX}{field.upper()}"


def _one_line(exc: ValidationError, given: dict[str, Any]) -> str:
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        field = str(error["loc"][0]) if error["loc"] else ""
        if not field:  # a check of the whole settings names its variable itself
            problems.append(message)
            continue
        if field in _KEY_VARIABLES:
            field = "api_key"
        where = _variable(field, given)
        if field in ("api_key", "server_token") or error["type"] == "extra_forbidden":
            problems.append(f"{where}: {message}")  # never echo a key
        else:
            problems.append(f"{where} = {error.get('input')!r}: {message}")
    return "invalid setting " + "; ".join(problems)


def _warn_unknown_variables() -> None:
    known = variable_names()
    for name in os.environ:
        if not name.startswith(PREFIX) or name in known or name in _warned_unknown:
            continue
        _warned_unknown.add(name)
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        logger.warning("unknown environment variable %s is ignored%s", name, hint)
