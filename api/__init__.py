"""The read side: a FastAPI app over the PostgreSQL pool (``fleetpulse api``).

``app.py`` builds the app and translates errors into HTTP answers; ``deps.py`` holds what the
routers share; the routers are ``agents.py`` (agents, their series and points), ``fleet.py`` (the
fleet summary, the catalog, the pipeline), ``config.py`` (remote settings), ``tags.py`` (agent tags), ``auditlog.py`` (the audit log), ``query.py`` (native
range and top-N queries), ``prom.py`` (Prometheus' HTTP API, over ``promql/``) and ``ui.py`` (the
dashboard, ``static/``). Shared by both query languages: ``selectors.py`` (label matchers),
``times.py`` (times and durations), ``tiers.py`` (which rollup tier a query reads) and
``windows.py`` (per-window aggregates). ``auth.py`` checks API keys; ``schemas.py`` is the JSON
contract.
"""
