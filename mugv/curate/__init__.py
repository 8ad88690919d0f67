"""Data curation: raw videos to a clean, captioned, deduplicated clip manifest (`mugv curate`).

One module per stage (screen, scenes + transitions, sharpness, motion, aesthetic, postprocess,
caption, dedup, balance), each with its own config section; `runner` ties them together and
`manifest` defines the output table. See docs/curate.md.
"""
