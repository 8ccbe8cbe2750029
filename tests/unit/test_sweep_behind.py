"""The sweep sends nothing to a queue that is behind (found by the chaos run: with a few
hundred purchases waiting in `charges`, every sweep sent each of them again, and the queue
only grew)."""

from __future__ import annotations

from shared.services.queue_stats import QueueFigure, behind


def test_the_sweep_skips_only_queues_whose_oldest_message_waited_too_long() -> None:
    figures = [
        QueueFigure("charges", depth=300, oldest_age_seconds=45.0),  # behind
        QueueFigure("webhooks", depth=4, oldest_age_seconds=0.5),  # keeping up
        QueueFigure("renewals", depth=0, oldest_age_seconds=None),  # empty
        # beat's own message (no send time of ours) at the head: nothing known, not behind
        QueueFigure("default", depth=2, oldest_age_seconds=None),
    ]
    assert behind(figures, stuck_after=10) == {"charges"}
    assert behind(figures, stuck_after=60) == set()
    assert behind([QueueFigure("charges", 0, None)], stuck_after=0) == set()
