"""Settings: every knob, read from ``LLM_ROUTER_*`` environment variables.

Only this module reads the environment; everything else gets a :class:`Settings` passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, HttpUrl, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FallbackName = Literal["bert", "tfidf"]


class Settings(BaseSettings):
    """Configuration of a :class:`~llm_router.Router`; see the README for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_ROUTER_", extra="forbid", populate_by_name=True, frozen=True
    )

    # The key is a SecretStr: repr, logs and model_dump show '**********'.
    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("api_key", "LLM_ROUTER_API_KEY", "OPENROUTER_API_KEY")
    )
    base_url: HttpUrl = HttpUrl("https://openrouter.ai/api/v1")
    model: str = "mistralai/mistral-7b-instruct"
    prompt: str = "classify/v1"
    prompts_dir: Path | None = None  # None: the prompts/ folder shipped with the package
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_completion_tokens: int = Field(64, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    retry_max_wait_s: float = Field(8.0, ge=0)
    # A Retry-After longer than this is not waited for: the router falls back instead.
    retry_after_max_s: float = Field(60.0, ge=0)
    rpm: float | None = Field(None, gt=0)
    # 401/402 switch the LLM off for this long; so do `breaker_threshold` transient
    # failures in a row (a circuit breaker), for `breaker_cooldown_s`.
    auth_cooldown_s: float = Field(300.0, ge=0)
    breaker_threshold: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, ge=0)
    max_input_chars: int = Field(6000, ge=100)
    cache: bool = True
    cache_dir: Path | None = None
    model_dir: Path = Path("models")
    fallbacks: Annotated[tuple[FallbackName, ...], NoDecode] = ("bert", "tfidf")
    device: str | None = None  # torch device for BERT; None picks cuda when available
    http_referer: str | None = None  # OpenRouter's optional app attribution headers
    app_title: str | None = "llm-router"

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _split_fallbacks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

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
