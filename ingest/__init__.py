"""Ingest: agents' batches from their gRPC streams into PostgreSQL, exactly once.

Two processes, one folder, read left to right as the data flows::

    frontend/  (gRPC streams in, XADD)  ->  queue.py  (Redis Streams)  ->  worker/  (XREADGROUP,
    ledger + COPY in one transaction, XACK)  ->  watermark.py  (the committed feed back to the
    front-ends, which relay it to the agents)

What both sides share lives here: ``keys.py`` (every Redis key and stream field), ``queue.py`` (the
stream contract), ``watermark.py`` (the committed feed), ``control.py`` (the control-plane
messages of front-ends, API and CLI), ``credentials.py`` (agent credentials: the front-end checks
them, the CLI revokes them) and ``agentsettings.py`` (remote settings: the API and CLI write
them, the front-end pushes them) and ``agenttags.py`` (agent tags: the config's and an
operator's).
"""
