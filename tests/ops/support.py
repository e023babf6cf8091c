"""The ops tests' tools: kustomize and promtool, installed by deploy/tools/ensure-tools.sh when missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZE = ROOT / ".local" / "tools" / "go" / "bin" / "kustomize"


def tool(name: str) -> str:
    """The path of kustomize or promtool, installing it through the project's script first if needed."""
    found = str(KUSTOMIZE) if name == "kustomize" and KUSTOMIZE.exists() else shutil.which(name)
    if not found:
        subprocess.run(["bash", str(ROOT / "deploy" / "tools" / "ensure-tools.sh"), name], check=True)
        found = str(KUSTOMIZE) if name == "kustomize" else shutil.which(name)
    assert found, f"{name} is not installed and deploy/tools/ensure-tools.sh could not install it"
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    """`kustomize build deploy/k8s/overlays/<overlay>`, as the list of its objects."""
    out = subprocess.run(
        [tool("kustomize"), "build", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]
