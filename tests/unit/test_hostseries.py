"""The simulated host: the agent's series, and values shaped and rounded as a host's are."""

from __future__ import annotations

import numpy as np

from fleetpulse.bench.hostseries import HostModel, host_series, host_specs

NOW = 1_796_000_000.0


def test_host_series_are_realistic_and_distinct() -> None:
    series = host_series(200)
    assert len(series) == 200
    assert len({(name, tuple(sorted(labels.items()))) for name, labels in series}) == 200
    label_keys = {key for _, labels in series for key in labels}
    assert {"cpu", "mode", "device", "mountpoint", "interface"} <= label_keys
    # a smaller set keeps the dashboard's series first
    assert [name for name, _ in host_series(13)] == ["cpu_usage_percent"] * 8 + ["memory_bytes"] * 5


def _model(hosts: int = 20, count: int = 200, seed: int = 1) -> HostModel:
    rng = np.random.default_rng(seed)
    return HostModel(hosts, count, rng, NOW, noise=np.random.default_rng(seed + 1))


def test_values_have_the_kernels_precision_and_bounds() -> None:
    model = _model()
    v = model.values(NOW + 10.0 * np.arange(360))
    assert v.shape == (20 * 200, 360)
    assert np.isfinite(v).all()
    specs = host_specs(200) * 20
    for row, spec in enumerate(specs):
        values = v[row]
        assert (values >= spec.lo).all() and (values <= spec.hi).all(), spec.name
        if spec.integer or spec.decimals == 0:
            assert (values == np.floor(values)).all(), spec.name
        elif spec.decimals is not None:
            scaled = values * 10**spec.decimals
            assert np.allclose(scaled, np.rint(scaled), rtol=0, atol=1e-6), spec.name
        if spec.counter:
            assert (np.diff(values) >= 0).all(), spec.name
        if spec.name.endswith("_bytes") and spec.labels.get("state") == "total":
            assert (values == values[0]).all(), spec.name


def test_cpu_modes_sum_to_100_and_memory_states_agree() -> None:
    model = _model(hosts=5, count=13)
    v = model.values(NOW + 10.0 * np.arange(100)).reshape(5, 13, 100)
    assert np.allclose(v[:, :8].sum(axis=1), 100.0, atol=0.1)
    total, used, available = v[:, 8], v[:, 9], v[:, 10]
    assert np.allclose(used + available, total, rtol=1e-9, atol=2)
    assert (used > 0).all() and (used < total).all()


def test_same_seed_same_hosts_and_hosts_differ() -> None:
    a, b = _model(seed=3), _model(seed=3)
    times = NOW + 10.0 * np.arange(5)
    np.testing.assert_array_equal(a.values(times), b.values(times))
    per_host = a.values(times).reshape(20, 200, 5)
    memory_total = per_host[:, 8, 0]
    assert len(set(memory_total.tolist())) > 1
