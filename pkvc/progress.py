"""How long-running work reports progress without printing.

Library code calls `progress.start(...)`, `advance(...)` and `finish()` on
an object it was given; the CLI passes one that drives a tqdm bar, scripts
and tests pass nothing and get `NO_PROGRESS`.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, task: str, total: int | None = None, unit: str = "it") -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def finish(self) -> None: ...


class _NoProgress:
    def start(self, task: str, total: int | None = None, unit: str = "it") -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()


def bytes_of(progress: Progress, event_type: type):
    """An event callback that advances `progress` by `event.n` for one event type.

    The tree walkers report small event objects; a bar counts bytes.
    """
    def on_event(event) -> None:
        if isinstance(event, event_type):
            progress.advance(event.n)
    return on_event
