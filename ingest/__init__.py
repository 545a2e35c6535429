"""The ingest path, one module per stage:

frontend (gRPC edge: auth, identity, validation) -> queue (Redis Streams, XADD) ->
worker (XREADGROUP loop) -> decode (entries to columns) -> series (series ids) ->
copier (ledger + binary COPY in one transaction, then XACK).

registry keeps the agents table (register, liveness) for the front-end; keys names every Redis key.
"""
