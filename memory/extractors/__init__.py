"""Extractors: ``local`` (rules, default) and ``llm`` (OpenAI-compatible chat API)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from memory.extractors.llm import LLMExtractor
from memory.extractors.local import LocalExtractor
from memory.types import CallForExtraction, ExtractionResult

if TYPE_CHECKING:
    from db.settings import Settings

__all__ = ["Extractor", "LLMExtractor", "LocalExtractor", "build_extractor"]


class Extractor(Protocol):
    name: str

    def extract(self, call: CallForExtraction) -> ExtractionResult: ...


def build_extractor(settings: Settings) -> Extractor:
    if settings.extractor == "local":
        return LocalExtractor()
    if settings.extractor == "llm":
        return LLMExtractor(
            settings.llm_model,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout_secs=settings.llm_timeout_secs,
            max_retries=settings.llm_max_retries,
        )
    raise ValueError(f"unknown extractor {settings.extractor!r}")
