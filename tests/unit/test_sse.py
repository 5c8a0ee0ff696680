"""Server-sent events: the text chunks of a stream, written without a model per token."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_a_streams_text_events_are_the_chunks_the_model_would_write() -> None:
    from vqaserve.server.responses import Delta
    from vqaserve.server.sse import _chunk, _content_events

    content = _content_events("chatcmpl-1", 1700000000, "shop-toy \"q\"")
    for text in ("jacket", " 商务", 'a "quoted" \\ line\n', "\x00", ""):
        assert content(text) == _chunk("chatcmpl-1", 1700000000, "shop-toy \"q\"", Delta(content=text))
