"""Request ids (requestids.py) and the JSON log lines that carry them (logs.py)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachegrid import logs, requestids


def test_a_usable_id_is_kept_and_a_missing_one_made_once() -> None:
    tokens = requestids.begin("abc-1")
    assert requestids.known() == requestids.current() == "abc-1"
    requestids.end(tokens)
    tokens = requestids.begin(None)
    assert requestids.known() is None  # nothing made until needed
    made = requestids.current()
    assert len(made) == 16
    assert requestids.current() == made == requestids.known()
    requestids.end(tokens)
    assert requestids.known() is None  # reset: the next request starts afresh


@given(st.text(max_size=80))
def test_an_id_in_a_header_or_log_line_is_always_safe(sent: str) -> None:
    tokens = requestids.begin(sent)
    try:
        used = requestids.current()
    finally:
        requestids.end(tokens)
    parts = used.split(",")
    assert all(1 <= len(p) <= requestids.MAX_LENGTH for p in parts)
    assert all(0x21 <= ord(c) <= 0x7E for c in used)
    assert used == sent or len(used) == 16


def test_a_batch_carries_each_of_its_ids_once_and_a_bounded_number() -> None:
    assert requestids.joined(["a", "b", "a", "c,d"]) == "a,b,c,d"
    many = requestids.joined([f"r{i}" for i in range(200)])
    assert many.count(",") == requestids.MAX_IDS - 1
    tokens = requestids.begin(many)
    assert requestids.current() == many  # a forwarded batch's ids are kept as they are
    requestids.end(tokens)


def test_json_lines_name_the_node_and_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("INFO", "auto", "node7")  # not a terminal: JSON
        tokens = requestids.begin("req-9")
        logging.getLogger("cachegrid.test").info(
            "ring epoch %d applied", 42, extra={"event": "ring_applied", "epoch": 42}
        )
        requestids.end(tokens)
        logging.getLogger("cachegrid.test").warning("no request here")
    finally:
        root.handlers, _ = saved[0], root.setLevel(saved[1])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "ring epoch 42 applied"
    assert first["epoch"] == 42
    assert first["event"] == "ring_applied"
    assert first["request_id"] == "req-9"
    assert first["node"] == "node7"
    assert first["level"] == "INFO"
    assert first["time"].endswith("Z")
    assert first["logger"] == "cachegrid.test"
    assert "request_id" not in second
