"""Pictures, from what the client sent to what the model sees.

    fetch.py    the SSRF-safe http(s) fetcher (the `ImageLoader` seam)
    decode.py   read a reference, check its declared size and format, decode, EXIF-rotate, RGB,
                fit to the pixel budget, hash the normalized pixels
    loading.py  the pipeline's image stage: a question's pictures through the above, off the event
                loop, remembering decodes of the same upload
"""
