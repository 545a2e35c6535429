"""The host agent: collects its host's metrics and keeps one gRPC stream to the platform.

``daemon.py`` runs it (enroll, register, heartbeat, remote settings, batches from the spool);
``collectors/`` reads the kernel (one module per collector family, run by a ``Scheduler``);
``spool.py`` keeps every batch on disk until the platform says it is committed; ``config.py``
reads agent.yaml; ``remote.py`` checks and applies the platform's settings; ``backoff.py`` paces
reconnects; ``report.py`` is the agent's own account of what it sent.

Light by rule: nothing here imports server code or server dependencies (tests/e2e/test_packaging.py).
"""
