"""The pure parts of a reload, each on its own: which settings changed and which of them
apply live, the watched files' signature, the rule pack update poller and its saved metadata
(README, "Running a fleet": "Distribute and reload"). tests/test_reload.py runs whole reloads."""
from __future__ import annotations
