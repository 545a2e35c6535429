"""The front-end side of ingest: agents' gRPC streams in, batches onto Redis Streams.

``server.py`` runs the process; ``service.py`` is the stream, and hands each message to its part:
``auth.py`` (who the agent is), ``session.py`` and ``sessions.py`` (its session, the live sessions
and the control plane), ``messages.py`` (the checks of what it sent), ``admission.py``
(backpressure and the per-agent rate), ``replies.py`` (what goes back), ``status.py`` (errors as
gRPC statuses), ``relay.py`` (the committed relay), ``registry.py`` (liveness in PostgreSQL) and
``selfmetrics.py`` (the process's /metrics).
"""
