"""Fleet simulator and end-to-end benchmark: not built yet (next issue).

Nothing in this package measures anything today; no performance figure is claimed anywhere in the
project until this harness produces it.
"""
