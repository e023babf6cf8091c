"""`compress_lz4_fast` patches a private aiokafka name (`lz4_encode` in its record-batch builder modules).

These tests fail loudly when a new aiokafka drops that name or stops compressing through it, and show
that the patch falls back (no crash, batches still built) when the name is gone."""

from __future__ import annotations

import importlib
from typing import Any

import aiokafka.codec
import pytest
from synergy_achievements import publisher
from synergy_achievements.publisher import LZ4_BUILDER_MODULES, compress_lz4_fast

CODEC_LZ4 = 0x03
PYTHON_BUILDER = "aiokafka.record.default_records"
C_BUILDER = "aiokafka.record._crecords.default_records"


def builder_modules() -> list[Any]:
    modules = [importlib.import_module(PYTHON_BUILDER)]
    try:
        modules.append(importlib.import_module(C_BUILDER))
    except ImportError:  # aiokafka built without its C extension: only the Python builder is used
        pass
    return modules


def build_lz4_batch(module: Any, values: list[bytes]) -> bytes:
    builder = module.DefaultRecordBatchBuilder(2, CODEC_LZ4, 0, -1, -1, -1, 1 << 20)
    for offset, value in enumerate(values):
        assert builder.append(offset, timestamp=1_700_000_000_000, key=b"k", value=value, headers=[]) is not None
    return bytes(builder.build())


def read_values(module: Any, batch: bytes) -> list[bytes]:
    return [record.value for record in module.DefaultRecordBatch(batch)]


@pytest.fixture
def lz4_levels(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The level of every lz4 compression made through aiokafka.codec (what `_lz4_fast` calls)."""
    levels: list[int] = []
    original = aiokafka.codec.lz4_encode

    def recording(payload: Any, level: int = 9) -> bytes:
        levels.append(level)
        return original(payload, level)

    monkeypatch.setattr(aiokafka.codec, "lz4_encode", recording)
    for module in builder_modules():  # undone after the test: other tests see aiokafka as it was
        monkeypatch.setattr(module, "lz4_encode", module.lz4_encode)
    return levels


def test_aiokafka_still_has_the_module_level_lz4_encode_the_patch_replaces() -> None:
    assert PYTHON_BUILDER in LZ4_BUILDER_MODULES and C_BUILDER in LZ4_BUILDER_MODULES
    for module in builder_modules():
        assert callable(getattr(module, "lz4_encode", None)), (
            f"{module.__name__} has no lz4_encode any more: compress_lz4_fast() no longer lowers the lz4 "
            "level (a new aiokafka?); find where its batch builder compresses now and update publisher.py")


@pytest.mark.parametrize("module_name", [PYTHON_BUILDER, C_BUILDER])
def test_after_the_patch_each_builder_compresses_lz4_at_level_1(module_name: str, lz4_levels: list[int]) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pytest.skip(f"{module_name} is not built in this aiokafka")
    assert module_name in compress_lz4_fast()
    values = [b'{"user":"u-%d","points":25,"pad":"%s"}' % (n, b"x" * 200) for n in range(50)]

    batch = build_lz4_batch(module, values)

    assert lz4_levels == [1], (f"{module_name} did not compress through the patched lz4_encode: aiokafka "
                               "changed how its builder compresses; the level patch has no effect")
    assert read_values(module, batch) == values  # readers see the same records


def test_a_builder_module_without_lz4_encode_is_left_alone(monkeypatch: pytest.MonkeyPatch,
                                                            lz4_levels: list[int]) -> None:
    python_builder = importlib.import_module(PYTHON_BUILDER)
    monkeypatch.delattr(python_builder, "lz4_encode")
    monkeypatch.setattr(publisher, "_lz4_warned", set())

    patched = compress_lz4_fast()

    assert PYTHON_BUILDER not in patched
    assert not hasattr(python_builder, "lz4_encode")  # nothing half-patched in its place
    other = [module for module in builder_modules() if module.__name__ != PYTHON_BUILDER]
    for module in other:  # the builder aiokafka really uses still gets level 1, and works
        values = [b"value-%d" % n * 20 for n in range(10)]
        assert read_values(module, build_lz4_batch(module, values)) == values
    assert lz4_levels == [1] * len(other)
