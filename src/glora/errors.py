"""Typed errors. Each names what is wrong and where (client, key, file) and how to fix it."""

from __future__ import annotations


class GloraError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidUpdateError(GloraError, ValueError):
    """A client update (or the list of them) cannot be aggregated.

    ``client`` is the index of the offending client in the list given to the server (``None``
    when the problem is the list itself); ``key`` names the layer when known.
    """

    def __init__(self, reason: str, client: int | None = None, key: str | None = None) -> None:
        self.reason = reason
        self.client = client
        self.key = key
        where = []
        if key is not None:
            where.append(f"layer `{key}`")
        if client is not None:
            where.append(f"client {client}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class AggregationError(GloraError):
    """The server could not aggregate a round (for example too few valid clients)."""


class ConfigError(GloraError, ValueError):
    """A configuration is invalid. Collects every problem so the user fixes them in one go."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(f"- {p}" for p in self.problems) if len(self.problems) > 1
                         else self.problems[0])


class CheckpointError(GloraError):
    """A checkpoint cannot be loaded safely (names the file)."""
