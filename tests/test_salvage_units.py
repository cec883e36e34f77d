"""Salvage reads a damaged spool by the SQLite file format: its varints, record serial types and
records, the database header and the write-ahead log (salts, cumulative checksums, the last
commit), each checked against files SQLite itself wrote (docs/hostile-inputs.md, "The spool
file"; sensor/deliver/salvage.py says what is read and what is not)."""
from __future__ import annotations
