"""Capture: answered requests kept for review and training (the learning loop, docs/learning-loop.md).

Off by default (`VQA_CAPTURE_URL` unset). Nothing here is on the request path but `submit()`, which
only appends to a queue; the database is written by a background task, so a slow or dead database
never slows or fails an answer (its dropped rows are counted). Never captured: requests a safety
check refused, and API keys (only a key's name).

Wiring the server (what the routes and the app's lifespan call):

    from vqaserve.capture import CaptureWriter, make_feedback, record_for
    writer = CaptureWriter.from_settings(settings.capture)   # when settings.capture.url is set
    await writer.start()                                      # lifespan start (needs the running loop)
    metrics.add_collector(CaptureCollector(writer, per_worker=metrics.multiprocess_dir is not None))
                                                              # capture/metrics.py: written, dropped{reason}
    # after each answer (not refused; the Question's images resolved by the pipeline):
    if writer.wants(response_id):                             # optional: skip building sampled-out records
        writer.submit(record_for(question, answer, response_id=response_id, model=pipeline.model_id,
                                 latency_ms=ms, key_name=key_name, confidence=confidence,
                                 adapter_fingerprint=fp))
    # POST /v1/feedback {"id", "rating", "correction"?, "comment"?}:
    result = await writer.set_feedback(body_id, make_feedback(rating, correction, comment))
    #   make_feedback raises InvalidRequest (400) naming the field; result "not_found" -> 404
    # DELETE /v1/captures/{id}:   found = await writer.delete(id)    (also if still queued; False -> 404)
    # review page:  await writer.store.query(CaptureQuery(confidence_below=settings.capture.review_below,
    #                   rating="down", either=True, model=..., adapter=..., since=..., until=...,
    #                   limit=50, offset=...)); await writer.store.count(same query) for paging;
    #               await writer.store.picture(content_hash) -> PNG bytes | None
    await writer.close(timeout_s=5.0)                         # lifespan end: flush what is queued

Stores (`CaptureStore`, capture/store.py): `open_store(url)` gives `SqliteStore` (sqlite:///PATH) or
`PostgresStore` (postgresql://...); both raise `CaptureUnavailable` when the database is unreachable.
"""

from __future__ import annotations

from vqaserve.capture.record import (
    CapturedPicture,
    CaptureQuery,
    CaptureRecord,
    Feedback,
    FeedbackResult,
    Rating,
    make_feedback,
    record_for,
)
from vqaserve.capture.store import CaptureStore, open_store, parse_capture_url, redact
from vqaserve.capture.writer import CaptureStats, CaptureWriter

__all__ = ["CaptureQuery", "CaptureRecord", "CaptureStats", "CaptureStore", "CaptureWriter", "CapturedPicture",
           "Feedback", "FeedbackResult", "Rating", "make_feedback", "open_store", "parse_capture_url",
           "record_for", "redact"]
