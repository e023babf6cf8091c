"""The Customer.io fake: `CustomerIoFake` (an ASGI app with inspection) and `serve_fake`."""

from synergy_cio_sink.fake.app import CustomerIoFake, Faults, ReceivedEvent
from synergy_cio_sink.fake.server import serve_fake

__all__ = ["CustomerIoFake", "Faults", "ReceivedEvent", "serve_fake"]
