"""The worker side of ingest: batches from Redis Streams into PostgreSQL, exactly once.

``consumer.py`` is one worker: it reads a chunk of entries, ``decode.py`` shapes them (checked by
``validate.py``), ``series.py`` resolves their series, ``copier.py`` writes them and the ledger in
one transaction. ``pool.py`` and ``rayengine.py`` run N workers (processes or Ray actors). Each
worker also hosts the storage jobs: ``rollups.py`` (the minute and hour tiers), ``compress.py``
(closed hours into chunks) and ``compaction.py`` (packing closed rollup partitions), each a
round that ``jobs.py`` runs on an interval in a thread of its own.
``failpoints.py`` lets the fault tests stop a worker at a chosen step.
"""
