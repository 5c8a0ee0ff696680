"""`vqa bench`: the service's figures against its performance targets. registry.py names every
scenario and its defaults; scenarios.py holds the HTTP ones (latency, throughput, cache, photo, soak)
and the helpers all scenarios share; one module per other scenario (stream, vision_reuse, structured,
near_duplicates, image_safety, upstream, followups, adapter_vllm); report.py the targets, the table
and the JSON record; the rest are their parts (load, workload, procs, vllm_server, inprocess)."""
