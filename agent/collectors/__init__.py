"""The agent's host metrics: one module per collector family, run by one scheduler object.

- ``names``: the collector names, importable without loading any collector (the server checks
  remote settings against them).
- ``sample``: what a collector returns, and the naming rules every metric follows.
- ``proc``: the /proc reader every collector reads the kernel's files through.
- ``cpu``, ``load``, ``memory``, ``disk``, ``network``, ``tcp``, ``system``: the collectors, one
  family per module; each module's docstring lists the metrics and labels it sends.
- ``scheduler``: `Scheduler`, which the agent daemon owns: runs the collectors that are due, keeps
  what lasts between collections, logs a failing collector once.
- ``table``: one collection as the table ``fleetpulse agent --once`` prints.

This file imports nothing, so that ``fleetpulse.agent.collectors.names`` loads alone.
"""
