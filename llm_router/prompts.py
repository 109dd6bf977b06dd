"""Versioned prompt files under ``prompts/<task>/vN.md``: data, not code.

A prompt file has three sections, each introduced by an HTML comment line:
``<!-- system -->`` (placeholder ``$labels``), ``<!-- user -->`` (``$tag`` and ``$text``) and
``<!-- reask -->`` (the one corrective message sent after an invalid answer). Placeholders are
filled with :meth:`string.Template.substitute`, so a missing one fails loudly. A version that
has been used in an evaluation is never edited: changes go into a new file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from llm_router.errors import ConfigError
from llm_router.labels import LabelSet

_SECTION = re.compile(r"^<!--\s*(system|user|reask)\s*-->\s*$", re.MULTILINE)
_VERSION = re.compile(r"^[a-z0-9_-]+/v[0-9]+$")


def prompts_root() -> Path:
    """The ``prompts/`` folder: packaged inside the wheel, or beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no prompts/ folder found next to {here}")


@dataclass(frozen=True)
class Prompt:
    """One prompt version, ready to be rendered for a label set and a text."""

    version: str
    system_template: str
    user_template: str
    reask_text: str
    sha256: str

    def system(self, labels: LabelSet) -> str:
        lines = "\n".join(f"{code} — {name}" for code, name in labels.names())
        return Template(self.system_template).substitute(labels=lines)

    def user(self, text: str) -> str:
        # The markers carry a tag derived from the text itself, so the text cannot contain
        # its own closing marker: a fake "<<<END PAPER ...>>>" inside it never matches.
        tag = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        return Template(self.user_template).substitute(tag=tag, text=text)


def prompt_path(
    version: str, root: Path | None = None, variable: str = "LLM_ROUTER_PROMPT"
) -> Path:
    """The file of a prompt version.

    Raises:
        ConfigError: the version is malformed or its file does not exist.
    """
    if not _VERSION.match(version):
        raise ConfigError(f"{variable} must look like 'classify/v1', got {version!r}")
    path = (root or prompts_root()) / f"{version}.md"
    if not path.is_file():
        raise ConfigError(f"unknown prompt version {version!r} ({variable}): {path} does not exist")
    return path


def load_prompt(version: str, root: Path | None = None) -> Prompt:
    """Read ``prompts/<version>.md`` (e.g. ``"classify/v1"``).

    Raises:
        ConfigError: the version is malformed, the file is missing or a section is absent.
    """
    path = prompt_path(version, root)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"unknown prompt version {version!r}: {path} does not exist") from None
    parts = _SECTION.split(raw)
    sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
    missing = {"system", "user", "reask"} - sections.keys()
    if missing:
        raise ConfigError(f"prompt {version!r} lacks section(s): {', '.join(sorted(missing))}")
    return Prompt(
        version=version,
        system_template=sections["system"],
        user_template=sections["user"],
        reask_text=sections["reask"],
        sha256=hashlib.sha256(raw.encode()).hexdigest(),
    )
