"""A media worker: one process that holds the media of the meetings pinned to it (DESIGN §9.1).

It composes the media plane (`sfu.service.LocalMediaService`) with the recorder, and serves the
control plane's requests from one local stream (`sfu.channel`). Started by the control plane's
worker pool as `python -m media_worker --fd N --index I`, never forked from it.
"""
