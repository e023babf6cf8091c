"""What `synergy infra up --brokers 3` writes for each node, read back from the rendered server.properties,
and the durability new topics get (no Kafka needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from synergy_common.localinfra import InfraError, LocalInfra, topic_durability

from tests.ops.support import ROOT


def properties(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )
    return {k: v for k, v in pairs}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "deploy" / "local" / "kafka").mkdir(parents=True)
    for name in ("server.properties.template", "log4j2.properties"):
        shutil.copy(
            ROOT / "deploy" / "local" / "kafka" / name, tmp_path / "deploy" / "local" / "kafka" / name
        )
    return tmp_path


def test_three_nodes_form_one_quorum_each_on_its_own_ports_and_directory(root: Path) -> None:
    infra = LocalInfra("cluster", kafka_port=22100, controller_port=22110, root=root, brokers=3)
    assert infra.bootstrap_servers == "127.0.0.1:22100,127.0.0.1:22101,127.0.0.1:22102"
    for node in infra.nodes:
        infra._render_kafka_config(node)
    configs = [
        properties(root / ".local" / "cluster" / "kafka" / f"node-{n}" / "server.properties")
        for n in (1, 2, 3)
    ]
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    assert {c["controller.quorum.voters"] for c in configs} == {
        "1@127.0.0.1:22110,2@127.0.0.1:22111,3@127.0.0.1:22112"
    }
    assert [c["listeners"] for c in configs] == [
        "PLAINTEXT://127.0.0.1:22100,CONTROLLER://127.0.0.1:22110",
        "PLAINTEXT://127.0.0.1:22101,CONTROLLER://127.0.0.1:22111",
        "PLAINTEXT://127.0.0.1:22102,CONTROLLER://127.0.0.1:22112",
    ]
    assert len({c["log.dirs"] for c in configs}) == 3
    for c in configs:
        assert (c["offsets.topic.replication.factor"], c["transaction.state.log.replication.factor"]) == (
            "3",
            "3",
        )
        assert (c["default.replication.factor"], c["min.insync.replicas"]) == ("3", "2")
        assert c["transaction.state.log.min.isr"] == "2"


def test_one_node_is_rendered_as_before(root: Path) -> None:
    infra = LocalInfra("single", kafka_port=22092, controller_port=22093, root=root)
    [node] = infra.nodes
    infra._render_kafka_config(node)
    config = properties(root / ".local" / "single" / "kafka" / "server.properties")
    assert config["node.id"] == "1"
    assert config["controller.quorum.voters"] == "1@127.0.0.1:22093"
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:22092,CONTROLLER://127.0.0.1:22093"
    assert (config["offsets.topic.replication.factor"], config["min.insync.replicas"]) == ("1", "1")
    assert infra.bootstrap_servers == "127.0.0.1:22092"
    assert node.pid_file == root / ".local" / "single" / "kafka.pid"


def test_topic_durability_comes_from_the_arguments_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SYNERGY_TOPIC_REPLICATION", raising=False)
    monkeypatch.delenv("SYNERGY_TOPIC_MIN_INSYNC", raising=False)
    assert topic_durability() == (1, 1)
    monkeypatch.setenv("SYNERGY_TOPIC_REPLICATION", "3")
    monkeypatch.setenv("SYNERGY_TOPIC_MIN_INSYNC", "2")
    assert topic_durability() == (3, 2)
    assert topic_durability(1, 1) == (1, 1)
    with pytest.raises(InfraError, match=r"min\.insync\.replicas 3 must lie between 1 and replication 2"):
        topic_durability(2, 3)
