"""voxmem memory engine: extraction, embeddings, consolidation, links and retrieval.

Pure domain code. No HTTP and no queue: the worker pipeline calls :mod:`memory.store` inside its
own transaction and the memory-query endpoint calls :mod:`memory.retrieval`.
"""
