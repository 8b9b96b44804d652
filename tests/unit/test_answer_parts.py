"""A large Prometheus answer parsed a part at a time: the same value as one parse (the event loop's lag meanwhile
is measured by benchmarks/large_answer.py)."""

from __future__ import annotations

import gc
from typing import Any

import orjson
import pytest

import sidecar.prometheus as prom
from sidecar.prometheus import PART_BYTES, loads_in_parts


def _vector(n: int, **extra: Any) -> bytes:
    result = [{"metric": {"__name__": "g", "instance": f"127.0.0.1:{i}", "odd": 'a{"metric":b]}' if i % 97 == 0
                          else f"v{i}"}, "value": [1.7e9, str(i * 0.5)]} for i in range(n)]
    return orjson.dumps({"status": "success", "data": {"resultType": "vector", "result": result}, **extra})


def _matrix(n: int) -> bytes:
    result = [{"metric": {"job": "j", "i": str(i)}, "values": [[1.7e9 + k, str(k)] for k in range(30)]}
              for i in range(n)]
    return orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


@pytest.mark.parametrize("content", [
    _vector(40_000),
    _vector(40_000, warnings=["partial answer [a]", "b]"]),
    _matrix(6_000),
    _vector(40_000).replace(b",", b" ,\n "),                         # whitespace Prometheus does not send
    orjson.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}),
    orjson.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "3"]}}),
    orjson.dumps({"status": "error", "errorType": "bad_data", "error": "x" * (3 * PART_BYTES)}),
], ids=["vector", "warnings", "matrix", "whitespace", "empty", "scalar", "error"])
def test_parts_give_exactly_what_one_parse_gives(content: bytes) -> None:
    assert loads_in_parts(content) == orjson.loads(content)


def test_a_label_that_spells_an_element_start_is_not_a_split() -> None:
    body = loads_in_parts(_vector(40_000))
    assert body["data"]["result"][97]["metric"]["odd"] == 'a{"metric":b]}'
    assert len(body["data"]["result"]) == 40_000


def test_a_broken_answer_fails_as_one_parse_does() -> None:
    content = _vector(40_000)
    cut = content.find(b'},{"metric":', len(content) // 2)
    broken = content[:cut] + b"},," + content[cut + 2:]                 # an empty element in the middle
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(broken)
    with pytest.raises(orjson.JSONDecodeError):
        loads_in_parts(broken)


def test_the_collector_is_paused_while_decoding_and_restored_after() -> None:
    assert gc.isenabled()
    with prom._no_collection():
        assert not gc.isenabled()
        with prom._no_collection():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
