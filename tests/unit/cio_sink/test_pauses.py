from __future__ import annotations

from synergy_cio_sink.pauses import WorkspacePauses


def test_a_refused_workspace_sends_one_probe_per_interval_and_resumes_on_an_answer() -> None:
    pauses = WorkspacePauses(probe_interval=10)
    assert pauses.wait("ws-a", now=0) is None

    assert pauses.refused("ws-a", now=1) is True
    assert pauses.refused("ws-a", now=2) is False  # already paused: not announced twice
    assert pauses.wait("ws-a", now=5) == 7
    assert pauses.wait("ws-b", now=5) is None  # other workspaces keep flowing
    assert pauses.wait("ws-a", now=12) is None  # the probe
    assert pauses.wait("ws-a", now=12.5) == 9.5  # everyone else waits for the next probe
    assert pauses.is_paused("ws-a")

    assert pauses.answered("ws-a") is True
    assert pauses.answered("ws-a") is False
    assert pauses.wait("ws-a", now=13) is None
    assert not pauses.is_paused("ws-a")
