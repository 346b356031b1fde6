"""The search-backend interface every rollout talks to.

A backend answers batches: the rollout hands it every pending query of every agent at once.
Backends never raise into an agent: a bad query gives an empty hit list, an unknown URL gives None.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class Page:
    url: str
    title: str
    text: str


class SearchBackend(ABC):
    @abstractmethod
    def search(self, queries: list[str], top_k: int = 3) -> list[list[Hit]]:
        """Top-k hits for each query, in the order of `queries`."""

    @abstractmethod
    def access(self, urls: list[str]) -> list[Page | None]:
        """The page behind each URL, or None when the backend does not know it."""
