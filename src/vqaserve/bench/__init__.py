"""`vqa bench`: latency, throughput, cache, photo and soak figures through HTTP, and the engine
in-process for comparison. scenarios.py holds the scenarios; the rest are their parts."""
