"""voxmem memory engine: extraction, embeddings, consolidation, links and retrieval.

Pure domain code. No HTTP and no queue: the worker pipeline calls :mod:`memory.store` inside its
own transaction and the memory-query endpoint calls :mod:`memory.retrieval`.
"""

import os as _os

# One BLAS thread for the per-query matrix-vector product: on this shared 2-core box the
# default OpenBLAS pool made a 10k x 384 search 8 ms p50 / 25 ms p95 instead of 1.0 / 1.3 ms.
# Only effective if numpy is not imported yet; entry points should set it too. An operator's
# explicit value wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
