"""The checks on the way in and out of the model.

    image_check.py   is this picture acceptable (NudeNet, a Hugging Face classifier, or markers)
    prompt_guard.py  user text that spells model control tokens is neutralised; length limit
    moderation.py    the output blocklist, for whole answers and for streams (hold-back window)
"""
