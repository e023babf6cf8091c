"""Garbage-collector settings for services that parse many JSON objects per request or batch: the one
place the project tunes CPython's collector (ingest and the fakes at start, the consumer runtime's
`run()`, analytics with its own young threshold)."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # allocations between two young collections (CPython's default: 700)
OLDER_THRESHOLDS = (20, 20)  # young collections between two of the middle generation; middle between full


def tune_garbage_collector(young_threshold: int = YOUNG_THRESHOLD, *, freeze: bool = True) -> None:
    """Make young collections rare and, with `freeze`, freeze what lives as long as the process.

    A request or batch keeps tens of thousands of freshly parsed objects alive while it is handled. With
    the default thresholds young collections traverse them again and again and promote them into frequent
    full collections (a fifth of a worker's time here, half of the consumer runtime's). Objects that live
    as long as the process (modules, the app) are frozen out of the collector's view (`freeze`: call it
    once started) and young collections run `young_threshold / 700` times less often; reference counting
    still frees almost everything at once.
    """
    if freeze:
        gc.collect()
        gc.freeze()
    gc.set_threshold(young_threshold, *OLDER_THRESHOLDS)
