"""Who runs when: the Submitters between the pipeline and the engine.

    admission.py  the door (bounded queue -> 429), deadlines and cancellation, shared by both
    batching.py   micro-batching for an engine in this process (one batch at a time)
    gate.py       admission only, for a model server that batches itself (vLLM)
"""
