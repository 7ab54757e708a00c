"""Data: the FlintstonesHD-format frame store, the synthetic benchmark, video conversion.

schema.py (record layout, metadata, random-access FrameStore), writer.py (shard
writing), synthetic.py (procedural long-video benchmark), convert_videos.py (user
videos + captions), tfds_builders.py (TFDS builders), latents.py (precomputed T-KLVAE
latents: a latent store). See docs/data.md.
"""
