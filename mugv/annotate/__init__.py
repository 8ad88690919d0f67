"""`mugv annotate`: a local web app for human preference labels and human evaluation.

Plain functions (campaign, assign, storage, stats, export, degrade) that the CLI, the FastAPI
server and the demo's synthetic judge all use; see docs/annotate.md.
"""
