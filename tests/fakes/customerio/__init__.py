"""The Customer.io fake used by the tests; it lives in the sink's package so it can run standalone
(`uv run python -m synergy_cio_sink.fake --port 8090`)."""

from synergy_cio_sink.fake import CustomerIoFake, Faults, ReceivedEvent, serve_fake

__all__ = ["CustomerIoFake", "Faults", "ReceivedEvent", "serve_fake"]
