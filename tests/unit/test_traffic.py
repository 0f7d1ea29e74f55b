"""Traffic model: a rollout description in, requests per second per model out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loadtests.traffic.profiles import ROLLOUTS
from loadtests.traffic.rollout import Diurnal, Peak, Rollout, load_rollout
from loadtests.traffic.shapes import DEFAULT_DIURNAL, Constant, DiurnalShape, ShapeSpec, Spike, Step

STEPS = 2880  # integration grid: 30 s


def small_rollout(**extra: object) -> Rollout:
    return Rollout.model_validate({
        "name": "test",
        "site_groups": [
            {"name": "hospitals", "sites": 100, "visits_per_site_per_day": 500, "adoption": 0.5,
             "usage": {"cxr": {"share": 0.04}, "llm": {"share": 0.1, "requests_per_use": 3}}},
            {"name": "clinics", "sites": 1000, "visits_per_site_per_day": 20,
             "usage": {"llm": {"share": 0.2, "requests_per_use": 3}}},
        ],
        "peak_day_factor": 1.2,
        "diurnal": {"baseline": 0.05, "peaks": [{"hour": 9.5, "width_h": 1.3, "weight": 1.0},
                                                {"hour": 15, "width_h": 1.3, "weight": 0.6}]},
        "burst_factor": 1.5,
        **extra,
    })


def test_daily_requests_multiply_sites_visits_share_and_turns() -> None:
    r = small_rollout()
    assert r.models == ["cxr", "llm"]
    assert r.daily_requests("cxr") == pytest.approx(100 * 0.5 * 500 * 0.04 * 1.2)
    assert r.daily_requests("llm") == pytest.approx((100 * 0.5 * 500 * 0.1 * 3
                                                     + 1000 * 20 * 0.2 * 3) * 1.2)
    assert r.daily_requests("unused") == 0


def test_diurnal_density_integrates_to_one_day() -> None:
    d = small_rollout().diurnal
    total = sum(d.density(24 * i / STEPS) for i in range(STEPS)) * 24 / STEPS
    assert total == pytest.approx(1.0, rel=1e-3)


def test_rates_over_the_day_add_up_to_the_daily_volume() -> None:
    r = small_rollout()
    per_day = sum(r.rate_rps("llm", 24 * i / STEPS) for i in range(STEPS)) * 86400 / STEPS
    assert per_day == pytest.approx(r.daily_requests("llm"), rel=1e-3)


def test_morning_peak_afternoon_peak_and_quiet_night() -> None:
    r = small_rollout()
    hourly = r.hourly("cxr")
    busiest = max(range(24), key=hourly.__getitem__)
    assert busiest == 9  # the 09:00-10:00 bin holds the 09:30 peak
    assert hourly[15] > hourly[12] > hourly[3]  # afternoon peak above lunch above night
    assert r.trough_rps("cxr") < 0.1 * max(hourly)


def test_peak_is_mean_times_peak_to_mean_times_burst() -> None:
    r = small_rollout()
    assert r.peak_rps("llm") == pytest.approx(
        r.mean_rps("llm") * r.diurnal.peak_to_mean() * r.burst_factor
    )
    flat = Diurnal(baseline=1.0, peaks=[Peak(hour=12, width_h=100, weight=1e-9)])
    assert flat.peak_to_mean() == pytest.approx(1.0, rel=1e-6)


def test_unknown_keys_and_unused_rollouts_are_rejected() -> None:
    with pytest.raises(ValidationError):
        small_rollout(surprise=1)
    with pytest.raises(ValidationError):
        Rollout.model_validate({**small_rollout().model_dump(), "site_groups": [
            {"name": "x", "sites": 1, "visits_per_site_per_day": 1}]})


@pytest.mark.parametrize("path", sorted(ROLLOUTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_rollouts_load_and_cover_the_three_workloads(path) -> None:  # type: ignore[no-untyped-def]
    r = load_rollout(path)
    assert set(r.models) == {"cxr-triage", "lung-nodule-ct", "clinical-llm"}
    assert all(r.peak_rps(m) > r.mean_rps(m) > r.trough_rps(m) > 0 for m in r.models)


def test_national_rollout_carries_the_documented_site_counts() -> None:
    r = load_rollout(ROLLOUTS / "national.yaml")
    sites = {g.name: g.sites for g in r.site_groups}
    assert sites["secondary-and-above-hospitals"] == 12294


def test_step_shape_climbs_in_equal_stairs() -> None:
    s = Step(duration_s=100, steps=5, start=0.2)
    assert [s.multiplier(t) for t in (0, 19.9, 20, 40, 60, 80, 99.9)] == pytest.approx(
        [0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_spike_shape_bursts_once_in_the_middle() -> None:
    s = Spike(duration_s=100, height=3, spike_s=10)
    assert [s.multiplier(t) for t in (0, 44.9, 45, 54.9, 55, 99)] == [1, 1, 3, 3, 1, 1]
    assert s.max_multiplier == 3


def test_diurnal_shape_compresses_the_day_and_peaks_at_one() -> None:
    s = DiurnalShape(duration_s=240, diurnal=DEFAULT_DIURNAL, start_hour=0)
    values = [s.multiplier(t / 10) for t in range(2400)]
    assert max(values) == pytest.approx(1.0, abs=1e-3)
    assert values.index(max(values)) / 10 == pytest.approx(9.5 / 24 * 240, abs=0.2)
    assert isinstance(ShapeSpec(kind="soak").build(10), Constant)
