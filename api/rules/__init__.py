"""Recording and alerting rules: rule files in Prometheus' format (files.py, templates.py), the
one evaluator of the platform (evaluator.py), alert states (alerts.py), what outlasts the
evaluator (store.py), and Alertmanager (notifier.py). docs/architecture.md, "Rules and alerts"."""
