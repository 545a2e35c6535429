"""The benchmarks (``fleetpulse bench <name>``, fleetpulse/cli.py) and what they share.

One module per command, each with ``add_arguments(parser)`` and ``run(args)`` (the table of
subcommands in fleetpulse/cli.py); each writes ``result.json`` under ``--results-dir``
(``bench/results``) and prints its summary as JSON on the last stdout line.

- ``fleet``: a simulated fleet against the whole platform, every batch verified (``verify``);
  ``targets``: its two target runs and the README's table.
- ``workers``: the worker pool alone, from a pre-loaded queue into PostgreSQL.
- ``connections``, ``ingestload`` (``bench ingest``): one front-end alone (``frontendproc``):
  idle heartbeating agents; batches as fast as it acks them.
- ``agentfoot`` (``bench agent``): the agent's footprint on a host, beside node_exporter
  (``nodeexporter``).
- ``queries``: the read API's latency on a dataset of 1B+ points (``querydata``: seeded and
  topped up in its database; ``querylayout``: its values, written in the platform's layout).
- ``layouts``: storage layouts for points compared on this host's real data.
- ``liveness``: the liveness sweep, agent pages and the agents' own PromQL series at fleet size;
  ``rules``: the built-in rules (api/rules/fleet.yml) at fleet size, round time per group.

Shared pieces:

- the simulated agent: ``simagent`` (its stream: connect, register, heartbeat, retry-after),
  ``simulator`` (the fleet's agents: batches, acks, replay), ``encoder`` (batches at numpy
  speed), ``hostseries`` (what a simulated host reports);
- measuring: ``resources`` (CPU and RSS of processes), ``disk`` (bytes per point stored),
  ``anchors`` (binary COPY ceiling, VictoriaMetrics), ``stats`` (percentiles, units);
- reporting: ``report`` (the live status line, result files, plots); ``ports`` (free ports).
"""
