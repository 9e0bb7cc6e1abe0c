"""The embedding index behind ``bt retrieve`` and ``bt index``.

catalog      the SQLite file, the source of truth: rows, claims, meta; read-only readers, busy writers
vectors      the vector file: header, appends, the memory map, checksums
migrations   step-by-step upgrades of older indexes, in place
store        EmbeddingIndex: both together (refresh steps, compaction, search, integrity)
files        file states, content hashes, refresh plans
"""
