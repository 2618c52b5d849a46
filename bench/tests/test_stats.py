"""The benchmark's own logic that can be wrong: percentiles, the ramp search, verdicts, tables."""

import math

import pytest

from bench.pyspy_summary import parse_line, summarize_raw
from bench.report import tables, targets
from bench.stats import Ramp, judge_step, markdown_table, percentile, summarize

# --- percentile -----------------------------------------------------------------------------

def test_percentile_nearest_rank_on_1_to_100():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1


def test_percentile_small_samples_round_up():
    assert percentile([10, 20, 30], 50) == 20      # rank ceil(1.5) = 2
    assert percentile([10, 20, 30], 99) == 30
    assert percentile([7], 99) == 7


def test_percentile_counts_missing_samples_as_infinitely_late():
    values = list(range(1, 100))                    # 99 arrived, 1 lost: p99 is the 99th = 99
    assert percentile(values, 99, missing=1) == 99
    assert percentile(values, 99, missing=2) == math.inf   # 2% lost: p99 cannot be met
    assert percentile([], 50, missing=3) == math.inf


def test_percentile_empty_is_nan_and_range_checked():
    assert math.isnan(percentile([], 99))
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summarize_converts_us_to_ms_and_sorts():
    s = summarize([3000, 1000, 2000])
    assert s["p50_ms"] == 2.0 and s["max_ms"] == 3.0 and s["n"] == 3
    assert summarize([1000], missing=1)["max_ms"] == math.inf


# --- step verdicts --------------------------------------------------------------------------

def test_judge_step():
    assert judge_step(p99_ms=99.9, expected=1000, received=1000, p99_limit_ms=100).passed
    assert not judge_step(p99_ms=100.1, expected=1000, received=1000, p99_limit_ms=100).passed
    lost = judge_step(p99_ms=5, expected=1000, received=998, p99_limit_ms=100)
    assert not lost.passed and "lost" in lost.reason
    assert not judge_step(p99_ms=math.nan, expected=10, received=10, p99_limit_ms=100).passed
    assert not judge_step(p99_ms=1, expected=0, received=0, p99_limit_ms=100).passed


# --- ramp -----------------------------------------------------------------------------------

def drive(ramp: Ramp, capacity: float) -> list[float]:
    rates = []
    while (r := ramp.next_rate()) is not None:
        rates.append(r)
        ramp.record(r, r <= capacity)
        assert len(rates) < 50
    return rates


def test_ramp_doubles_then_bisects_geometrically():
    ramp = Ramp(start=1, factor=2, bisect_steps=2)
    rates = drive(ramp, capacity=5)
    assert rates[:4] == [1, 2, 4, 8]
    assert rates[4] == pytest.approx(math.sqrt(32))  # between 4 (pass) and 8 (fail)
    assert rates[5] == pytest.approx(math.sqrt(4 * math.sqrt(32)))  # 5.66 failed
    assert len(rates) == 6
    assert ramp.best_pass() == pytest.approx(math.sqrt(4 * math.sqrt(32)))
    assert ramp.lowest_fail() == pytest.approx(math.sqrt(32))


def test_ramp_goes_down_when_the_first_step_fails():
    ramp = Ramp(start=8, factor=2, min_rate=0.5, bisect_steps=1)
    rates = drive(ramp, capacity=1.5)
    assert rates[:4] == [8, 4, 2, 1]
    assert rates[4] == pytest.approx(math.sqrt(2))
    assert ramp.best_pass() == pytest.approx(math.sqrt(2))


def test_ramp_stops_at_min_rate_when_nothing_passes():
    ramp = Ramp(start=2, factor=2, min_rate=0.5)
    assert drive(ramp, capacity=0) == [2, 1, 0.5]
    assert ramp.best_pass() is None


def test_ramp_caps_at_max_rate_and_step_count():
    ramp = Ramp(start=1, factor=2, max_rate=5)
    assert drive(ramp, capacity=1e9) == [1, 2, 4, 5]
    ramp = Ramp(start=1, factor=2, max_steps=3)
    assert drive(ramp, capacity=1e9) == [1, 2, 4]


def test_ramp_record_must_match_next_rate():
    ramp = Ramp(start=1)
    ramp.next_rate()
    with pytest.raises(ValueError):
        ramp.record(3, True)
    assert ramp.next_rate() == 1  # asking again repeats the pending rate


# --- tables ---------------------------------------------------------------------------------

def test_markdown_table_formats_and_escapes():
    t = markdown_table(["a", "b"], [["x|y", 1234.5], [None, math.inf]])
    lines = t.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[1] == "|---|---:|"
    assert lines[2] == "| x\\|y | 1,234 |" or lines[2] == "| x\\|y | 1,235 |"
    assert lines[3] == "| — | ∞ |"
    with pytest.raises(ValueError):
        markdown_table(["a"], [[1, 2]])


def _fan(target, best, peak, p99=50.0):
    return {"target": target, "subscribers": 1000, "best_deliveries_per_s": best, "best_p99_ms": p99,
            "peak_deliveries_per_s": peak, "steps": []}


def test_fanout_ratios_and_targets():
    res = {"fanout": [_fan("parley", 48000, 50000), _fan("bare", 60000, 61000), _fan("tutorial-memory", 0, 1900, None)]}
    md = tables(res)
    row = next(line for line in md.splitlines() if line.startswith("| bare"))
    assert "0.80×" in row                      # 48,000 / 60,000
    lines = targets(res)
    assert lines[0].startswith("PASS") and "0.80×" in lines[0]
    assert lines[1].startswith("PASS") and "25×" in lines[1]  # 48,000 / 1,900 = 25.3
    assert lines[1].endswith("the bare ASGI app: 32×")        # 60,000 / 1,900 = 31.6: the hour's ceiling
    res["fanout"][0]["best_deliveries_per_s"] = 47000
    assert targets(res)[0].startswith("MISS")


def test_idle_target_is_na_below_10000_connections_unless_it_already_misses():
    row = {"target": "parley", "connections": 2000, "open_after_settle": 2000, "rss_before_mb": 1,
           "rss_after_mb": 2, "rss_per_conn_kb": 20.0, "connects_per_s": 100}
    assert targets({"idle": [row]})[0].startswith("n/a")
    row["rss_per_conn_kb"] = 40.0
    assert targets({"idle": [row]})[0].startswith("MISS")
    row.update(connections=10000, open_after_settle=10000, rss_per_conn_kb=24.9)
    assert targets({"idle": [row]})[0].startswith("PASS")
    row.update(open_after_settle=3496, close_codes={"1011": 6504})  # memory of sockets since dropped
    assert targets({"idle": [row]})[0].startswith("MISS")


# --- py-spy summary -------------------------------------------------------------------------

def test_pyspy_parse_and_summarize():
    frames, n = parse_line("run (asyncio/base_events.py:10);send (/work/main/parley/consumers.py:99) 7")
    assert n == 7 and frames == ["run (asyncio/base_events.py)", "send (parley/consumers.py)"]
    text = summarize_raw("a (x.py:1);b (y.py:2) 3\na (x.py:1) 1\n", top=5)
    assert "4 samples" in text
    assert "75.0%  b (y.py)" in text and "100.0%  a (x.py)" in text


def test_reconnect_target_is_na_for_a_small_storm_that_passes():
    rc = {"target": "parley", "clients": 1000, "resumed": 1000, "recovered": 1000, "gaps": 0, "duplicates": 0,
          "behind_at_end": 0, "storm_secs": 6.5, "gap_free": True}
    assert targets({"reconnect": rc})[0].startswith("n/a")
    rc["storm_secs"] = 12.0
    assert targets({"reconnect": rc})[0].startswith("MISS")
    rc.update(clients=5000, storm_secs=9.0)
    assert targets({"reconnect": rc})[0].startswith("PASS")


def test_recompute_counts_a_passing_probe_and_ignores_failed_steps():
    from bench.report import recompute

    steps = [{"deliveries_per_s": 1000.0, "p99_ms": 120.0, "reason": "p99 120 ms > 100 ms"},
             {"deliveries_per_s": 4000.0, "p99_ms": 80.0, "reason": "ok", "probe": True},
             {"deliveries_per_s": 9000.0, "p99_ms": 900.0, "reason": "p99 900 ms > 100 ms"}]
    r = recompute({"fanout": [{"target": "x", "steps": steps}]})["fanout"][0]
    assert r["best_deliveries_per_s"] == 4000.0 and r["best_p99_ms"] == 80.0
    assert r["peak_deliveries_per_s"] == 9000.0


# --- storm timing helpers ---------------------------------------------------------------------

def test_deciles_of_a_storm():
    from bench.stats import deciles

    assert deciles([]) == []
    assert deciles([float(i) for i in range(1, 101)]) == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]


def test_listen_overflows_reads_the_kernel_counter(tmp_path, monkeypatch):
    import bench.stats as stats

    netstat = tmp_path / "netstat"
    netstat.write_text("TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 877 877\n"
                       "IpExt: InNoRoutes\nIpExt: 0\n")
    real_path = stats.Path
    monkeypatch.setattr(stats, "Path", lambda p: netstat if p == "/proc/net/netstat" else real_path(p))
    assert stats.listen_overflows() == 877
    netstat.write_text("IpExt: InNoRoutes\nIpExt: 0\n")
    assert stats.listen_overflows() is None
