"""Workspaces whose credentials Customer.io refused (401/403): paused, probed, resumed. Pure.

A paused workspace sends nothing but one probe per `probe_interval` (each with credentials re-read
from Postgres); the first answer that is not 401/403 resumes it. Other workspaces are untouched.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class WorkspacePauses:
    probe_interval: float = 10.0
    _next_probe: dict[Hashable, float] = field(default_factory=dict)

    def is_paused(self, workspace: Hashable) -> bool:
        return workspace in self._next_probe

    def wait(self, workspace: Hashable, now: float) -> float | None:
        """Seconds until this workspace may send again, or None: send now.

        While paused, the first caller once the probe is due gets None (it is the probe) and books
        the next probe, so the callers after it wait again.
        """
        at = self._next_probe.get(workspace)
        if at is None:
            return None
        if now < at:
            return at - now
        self._next_probe[workspace] = now + self.probe_interval
        return None

    def refused(self, workspace: Hashable, now: float) -> bool:
        """Customer.io answered 401/403. True when this pauses a workspace that was flowing."""
        newly = workspace not in self._next_probe
        self._next_probe[workspace] = now + self.probe_interval
        return newly

    def answered(self, workspace: Hashable) -> bool:
        """Any other answer came back. True when this resumes a paused workspace."""
        return self._next_probe.pop(workspace, None) is not None
