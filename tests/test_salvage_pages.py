"""Salvage over whole files: leaf pages through their cell-pointer arrays, overflow chains, the
freelist, the walk of the tables' b-trees from the schema page and the scan that yields rows,
each checked against what SQLite itself reads from the same file before and after damage
(docs/hostile-inputs.md, "The spool file")."""
from __future__ import annotations
