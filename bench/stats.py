"""Pure helpers of the benchmark: percentiles, the ramp search, step verdicts, the result table.

Nothing here touches sockets or processes, so it is unit-tested in bench/tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INF = float("inf")


def percentile(sorted_values: Sequence[float], p: float, *, missing: int = 0) -> float:
    """Nearest-rank percentile (p in 0..100) of an ascending sequence.

    `missing` counts samples that never arrived (lost deliveries, unanswered sends); they rank
    above every value, so a p99 with more than 1% missing is infinite. Empty input gives NaN.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    n = len(sorted_values) + missing
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(p / 100 * n))  # 1-based nearest rank
    if rank > len(sorted_values):
        return INF
    return float(sorted_values[rank - 1])


def summarize(values_us: Iterable[float], *, missing: int = 0) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds of latencies given in microseconds."""
    vals = sorted(values_us)
    out = {f"p{p}_ms": percentile(vals, p, missing=missing) / 1000 for p in (50, 90, 99)}
    out["max_ms"] = (vals[-1] / 1000 if vals else math.nan) if not missing else INF
    out["n"] = len(vals)
    out["missing"] = missing
    return out


@dataclass
class StepVerdict:
    passed: bool
    reason: str


def judge_step(*, p99_ms: float, expected: int, received: int, p99_limit_ms: float,
               max_loss: float = 0.001) -> StepVerdict:
    """A ramp step passes when nearly everything arrived and the p99 is within the limit."""
    if expected <= 0:
        return StepVerdict(False, "nothing sent")
    loss = max(0, expected - received) / expected
    if loss > max_loss:
        return StepVerdict(False, f"lost {loss:.2%}")
    if not p99_ms <= p99_limit_ms:  # also catches NaN
        return StepVerdict(False, f"p99 {p99_ms:.1f} ms > {p99_limit_ms:g} ms")
    return StepVerdict(True, "ok")


@dataclass
class Ramp:
    """Offered-load search: grow geometrically while steps pass, then bisect the first failure.

    If the very first step fails, shrink geometrically (down to `min_rate`) to find any passing
    rate at all. `next_rate()` returns None when the search is done; feed each result to
    `record()`. The number of steps is bounded by `max_steps`.
    """

    start: float
    factor: float = 2.0
    max_rate: float = 1e9
    min_rate: float = 0.0
    bisect_steps: int = 2
    max_steps: int = 20
    history: list[tuple[float, bool]] = field(default_factory=list)
    _phase: str = "up"
    _bisects_done: int = 0
    _pending: float | None = None

    def best_pass(self) -> float | None:
        rates = [r for r, ok in self.history if ok]
        return max(rates) if rates else None

    def lowest_fail(self) -> float | None:
        rates = [r for r, ok in self.history if not ok]
        return min(rates) if rates else None

    def next_rate(self) -> float | None:
        if self._pending is not None:
            return self._pending
        if len(self.history) >= self.max_steps:
            return None
        if not self.history:
            rate = self.start
        else:
            last_rate, last_ok = self.history[-1]
            good, bad = self.best_pass(), self.lowest_fail()
            if self._phase == "up":
                if last_ok:
                    rate = last_rate * self.factor
                    if rate > self.max_rate:
                        if last_rate >= self.max_rate:
                            return None
                        rate = self.max_rate
                elif good is None:
                    self._phase = "down"
                    rate = last_rate / self.factor
                else:
                    self._phase = "bisect"
                    return self.next_rate()
            elif self._phase == "down":
                if last_ok:
                    self._phase = "bisect"
                    return self.next_rate()
                rate = last_rate / self.factor
                if rate < self.min_rate:
                    return None
            else:  # bisect
                if good is None or bad is None or self._bisects_done >= self.bisect_steps:
                    return None
                rate = math.sqrt(good * bad)  # geometric midpoint: the ramp is geometric too
                self._bisects_done += 1
        self._pending = rate
        return rate

    def record(self, rate: float, passed: bool) -> None:
        if self._pending is None or rate != self._pending:
            raise ValueError("record() must follow next_rate() with the same rate")
        self._pending = None
        self.history.append((rate, passed))


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0 or math.isnan(base) or math.isnan(value):
        return None
    return value / base


def fmt_num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞"
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are formatted with fmt_num unless already strings.

    Pipes inside cells are escaped so a cell can never split a row.
    """
    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else fmt_num(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, table has {len(headers)} columns")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def target_line(name: str, ok: bool | None, detail: str) -> str:
    verdict = "PASS" if ok else ("n/a" if ok is None else "MISS")
    return f"{verdict:4}  {name}: {detail}"


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (TcpExt
    ListenOverflows, machine-wide since boot), or None where /proc/net/netstat is missing.
    A dropped SYN is retried by the client after 1, 3, 7, 15 s: a storm's duration can be that
    schedule rather than the server's speed."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def deciles(sorted_values: Sequence[float]) -> list[float]:
    """10th … 90th and 100th percentile of an ascending sequence (empty: [])."""
    if not sorted_values:
        return []
    return [round(percentile(sorted_values, p), 2) for p in (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)]
