"""Turning results into the Markdown tables, target verdicts and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.stats import fmt_num, fmt_ratio, markdown_table, ratio, target_line


def _by(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("target") == name), None)


def recompute(res: dict[str, Any]) -> dict[str, Any]:
    """Best/peak figures from the recorded steps: a step counts when it lost nothing and met the
    p99 bound (reason "ok"), the saturation probe included. Lets `python -m bench report DIR`
    re-render an old results.json with the current rules."""
    for section in ("fanout", "scaleout"):
        for r in res.get(section) or []:
            ok = [s for s in r["steps"] if s.get("reason") == "ok"]
            best = max(ok, key=lambda s: s["deliveries_per_s"]) if ok else None
            r["best_deliveries_per_s"] = best["deliveries_per_s"] if best else 0.0
            r["best_p99_ms"] = best["p99_ms"] if best else None
            r["peak_deliveries_per_s"] = max((s["deliveries_per_s"] for s in r["steps"]), default=0.0)
    return res


def tables(res: dict[str, Any]) -> str:
    out: list[str] = []
    fan = res.get("fanout") or []
    if fan:
        parley = _by(fan, "parley")
        p_best = parley["best_deliveries_per_s"] if parley else None
        rows = []
        for r in fan:
            rows.append([r["target"], r["subscribers"], r["best_deliveries_per_s"], fmt_num(r["best_p99_ms"], 1),
                         r["peak_deliveries_per_s"],
                         fmt_ratio(ratio(p_best, r["best_deliveries_per_s"])) if r["target"] != "parley" else "1.00×",
                         fmt_ratio(ratio(p_best, r["peak_deliveries_per_s"])) if r["target"] != "parley" else "—"])
        out.append("### 1. Fan-out: one room, one sender\n\n" + markdown_table(
            ["server", "subscribers", "deliveries/s at p99 ≤ 100 ms", "p99 ms there", "peak deliveries/s (any latency)",
             "Parley ÷ it (p99-bounded)", "Parley ÷ its peak"], rows))
    chat = res.get("chat") or []
    if chat:
        parley = _by(chat, "parley")
        rows = [[r["target"], r["connections"], r["offered_msgs_per_s"], r["deliveries_per_s"],
                 fmt_num(r["p50_ms"], 1), fmt_num(r["p99_ms"], 1), fmt_num(r.get("ack_p99_ms"), 1),
                 f'{r["received"]:,}/{r["expected"]:,}', fmt_num(r["connect_secs"], 1),
                 fmt_ratio(ratio(parley["p99_ms"], r["p99_ms"])) if parley and r is not parley else "—"]
                for r in chat]
        out.append("### 2. Chat mix: rooms of 10, every user sends every few seconds\n\n" + markdown_table(
            ["server", "connections", "offered msg/s", "deliveries/s", "p50 ms", "p99 ms", "ack p99 ms",
             "delivered/expected", "connect s", "Parley p99 ÷ its p99"], rows))
    idle = res.get("idle") or []
    if idle:
        parley = _by(idle, "parley")
        rows = [[r["target"], r["connections"], r["open_after_settle"], fmt_num(r["rss_before_mb"], 1),
                 fmt_num(r["rss_after_mb"], 1), fmt_num(r["rss_per_conn_kb"], 1), fmt_num(r["connects_per_s"]),
                 fmt_ratio(ratio(parley["rss_per_conn_kb"], r["rss_per_conn_kb"])) if parley and r is not parley else "—"]
                for r in idle]
        out.append("### 3. Idle connections: server memory\n\n" + markdown_table(
            ["server", "connections", "still open", "RSS before MB", "RSS after MB", "RSS per conn KB",
             "connects/s", "Parley ÷ it"], rows))
    ing = res.get("ingest") or []
    if ing:
        rows = [[r["target"], r["senders"], r["best_acked_per_s"], fmt_num(r["best_ack_p99_ms"], 1),
                 r["peak_acked_per_s"]] for r in ing]
        out.append("### 4. Ingest: messages persisted and acked (Parley only: the baselines store nothing)\n\n"
                   + markdown_table(["database", "sender sockets", "acked msg/s at ack p99 ≤ 50 ms", "ack p99 ms there",
                                     "peak acked msg/s"], rows))
    rc = res.get("reconnect")
    if rc:
        rows = [[rc["target"], rc["clients"], rc["resumed"], rc["recovered"], rc["gaps"], rc["duplicates"],
                 rc["behind_at_end"], fmt_num(rc["storm_secs"], 2), fmt_num(rc["join_p99_s"], 2),
                 fmt_num(rc["caught_up_secs"], 2), "yes" if rc["gap_free"] else "NO"]]
        out.append("### 5. Reconnect storm: all clients resume at once (Parley only: the baselines have no resume)\n\n"
                   + markdown_table(["server", "clients", "resumed", "recovered", "gaps", "duplicates", "behind",
                                     "all joined s", "join p99 s", "all caught up s", "gap-free"], rows))
        if rc.get("join_deciles_s"):
            # Older results.json files have no deciles: the table above is all they can show.
            out.append("Clients through, seconds from the storm's start, at 10%, 20% … 100% of them: "
                       f"handshake {rc.get('hello_deciles_s')}, join {rc['join_deciles_s']}; "
                       f"listen-queue drops meanwhile (kernel ListenOverflows): {rc.get('listen_overflows')}\n")
    so = res.get("scaleout") or []
    if so:
        mem = _by(fan, "parley")
        base = mem["best_deliveries_per_s"] if mem else None
        rows = [[r["target"], r["procs"], r["best_deliveries_per_s"], fmt_num(r["best_p99_ms"], 1),
                 r["peak_deliveries_per_s"], fmt_ratio(ratio(r["best_deliveries_per_s"], base))] for r in so]
        out.append("### 6. Scale-out: the fan-out over Redis, subscribers split over the processes\n\n" + markdown_table(
            ["server", "processes", "deliveries/s at p99 ≤ 100 ms", "p99 ms there", "peak deliveries/s",
             "÷ Parley in-memory, 1 process"], rows))
    conv = res.get("conversation") or []
    if conv:
        out.append(conversation_table(conv))
    found = res.get("search") or []
    if found:
        from bench.search import table as search_table
        out.append("### 8. Search: latency beside a history page read, same run\n" + search_table(found))
    return "\n\n".join(out)


def conversation_table(conv: list[dict[str, Any]]) -> str:
    """Section 7: each row beside the plain chat mix of its round in the same run."""
    rows = []
    for r in conv:
        base = next((b for b in conv if b["target"] == "chat v1 (sends)" and b.get("round") == r.get("round")), None)
        e = r.get("entries") or {"message": r["received"], "edit": 0, "reaction": 0}
        mine = r is base or base is None

        def vs(key: str, r: dict[str, Any] = r, base: dict[str, Any] | None = base, mine: bool = mine) -> str:
            return "—" if mine or base is None else fmt_ratio(ratio(r.get(key), base.get(key)))
        rows.append([r.get("round", 1), r["target"], r.get("protocol", "?"), r.get("mix", "?"), r["connections"], r["offered_msgs_per_s"],
                     r["deliveries_per_s"], f'{e["message"]:,} / {e["edit"]:,} / {e["reaction"]:,}',
                     fmt_num(r["p50_ms"], 1), fmt_num(r["p99_ms"], 1), fmt_num(r.get("edit_p99_ms"), 1),
                     fmt_num(r.get("ack_p99_ms"), 1), fmt_num(r.get("reply_p99_ms"), 1),
                     f'{r["received"]:,}/{r["expected"]:,}', vs("deliveries_per_s"), vs("p99_ms"), vs("ack_p99_ms")])
    return ("### 7. Conversation: the chat mix on protocol version 2, with edits and reactions\n\n" + markdown_table(
        ["round", "row", "protocol", "turns", "connections", "offered turns/s", "deliveries/s", "message / edit / reaction",
         "p50 ms", "p99 ms", "edit p99 ms", "ack p99 ms", "edit/react reply p99 ms", "delivered/expected",
         "deliveries/s ÷ chat v1", "p99 ÷ chat v1", "ack p99 ÷ chat v1"], rows)
        + "\n\nDeliveries: every `message`, `edit` and `reaction` frame; latency (p50, p99) over the stamped "
        "ones (messages and edits; a reaction has no text to stamp). ack p99: sends' acks; reply p99: the "
        "`edited` / `reacted` replies. The second round runs the rows in the reverse order.\n")


def targets(res: dict[str, Any]) -> list[str]:
    lines = []
    fan = res.get("fanout") or []
    parley, bare = _by(fan, "parley"), _by(fan, "bare")
    tut = _by(fan, "tutorial-memory")
    if parley and bare:
        r = ratio(parley["best_deliveries_per_s"], bare["best_deliveries_per_s"])
        lines.append(target_line("fan-out ≥ 0.8× bare ASGI (p99 ≤ 100 ms)", r is not None and r >= 0.8,
                                 f"{fmt_num(parley['best_deliveries_per_s'])} vs {fmt_num(bare['best_deliveries_per_s'])} deliveries/s = {fmt_ratio(r)}"))
    asgi = _by(fan, "parley-asgi")
    if asgi and bare:
        # The same target read through the ASGI send alone: Parley without parley/realtime/uvicorn_writer.py's
        # prepared frames, i.e. doing per frame exactly what the bare app does.
        r = ratio(asgi["best_deliveries_per_s"], bare["best_deliveries_per_s"])
        lines.append(target_line("fan-out via the ASGI send only (parley-asgi) ≥ 0.8× bare", r is not None and r >= 0.8,
                                 f"{fmt_num(asgi['best_deliveries_per_s'])} vs {fmt_num(bare['best_deliveries_per_s'])} deliveries/s = {fmt_ratio(r)}"))
    if parley and tut:
        base = max(tut["best_deliveries_per_s"], tut["peak_deliveries_per_s"])
        r = ratio(parley["best_deliveries_per_s"], base)
        # The issue derives this from "≥ 0.8× bare" and its own figures (bare ~27× the tutorial);
        # bare's ratio in the same run says what the ASGI server allowed that hour.
        ceiling = f"; the bare ASGI app: {fmt_ratio(ratio(bare['best_deliveries_per_s'], base))}" if bare else ""
        lines.append(target_line("fan-out ≥ 25× tutorial (vs its peak, any latency)", r is not None and r >= 25,
                                 f"{fmt_num(parley['best_deliveries_per_s'])} vs {fmt_num(base)} = {fmt_ratio(r)}{ceiling}"))
    idle = _by(res.get("idle") or [], "parley")
    if idle:
        kb = idle["rss_per_conn_kb"]
        full = idle["connections"] >= 10000
        # Memory per connection means nothing if the server dropped some of them meanwhile.
        all_open = idle.get("open_after_settle", idle["connections"]) >= idle["connections"]
        verdict = (kb <= 25 and all_open) if full else None if kb <= 25 and all_open else False
        lines.append(target_line(f"idle ≤ 25 KB RSS/conn at 10,000 ({idle['connections']:,} measured)", verdict,
                                 f"{kb:.1f} KB/conn, {idle.get('open_after_settle', '?'):,} still open, "
                                 f"server closes {idle.get('close_codes') or 'none'}"))
    for r in res.get("ingest") or []:
        ok = r["best_acked_per_s"] >= 2000
        lines.append(target_line(f"ingest {r['target']} ≥ 2,000 msg/s at ack p99 ≤ 50 ms", ok,
                                 f"{fmt_num(r['best_acked_per_s'])} msg/s (ack p99 {fmt_num(r['best_ack_p99_ms'], 1)} ms)"))
    rc = res.get("reconnect")
    if rc:
        ok = rc["gap_free"] and rc["storm_secs"] <= 10
        full = rc["clients"] >= 5000  # a smaller storm that passes says nothing about 5,000
        lines.append(target_line(f"reconnect storm 5,000 gap-free within 10 s ({rc['clients']:,} measured)",
                                 ok if full or not ok else None,
                                 f"{rc['resumed']:,} resumed, {rc['recovered']:,} recovered, gaps {rc['gaps']}, dups "
                                 f"{rc['duplicates']}, all joined in {rc['storm_secs']:.2f} s"))
    so = _by(res.get("scaleout") or [], "parley-redis x2")
    if so and parley:
        r = ratio(so["best_deliveries_per_s"], parley["best_deliveries_per_s"])
        lines.append(target_line("Redis scale-out (2 procs) costs ≤ 15% vs in-memory 1 proc",
                                 r is not None and r >= 0.85, f"{fmt_ratio(r)} of in-memory"))
    return lines


def plots(res: dict[str, Any], outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fan = (res.get("fanout") or []) + (res.get("scaleout") or [])
    if fan:
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in fan:
            xs = [s["offered_deliveries_per_s"] for s in r["steps"]]
            ys = [s["deliveries_per_s"] for s in r["steps"]]
            pts = sorted(zip(xs, ys, strict=True))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r["target"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered deliveries/s")
        ax.set_ylabel("delivered deliveries/s (measured)")
        ax.set_title("Fan-out: throughput vs offered load (1 room)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.savefig(outdir / "fanout_throughput.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append("fanout_throughput.png")

        fig, ax = plt.subplots(figsize=(8, 5))
        for r in fan:
            passing = [s for s in r["steps"] if s["passed"]]
            step = max(passing, key=lambda s: s["deliveries_per_s"]) if passing else \
                min(r["steps"], key=lambda s: s["offered_msgs_per_s"]) if r["steps"] else None
            if not step or not step["lat_sample_ms"]:
                continue
            v = sorted(step["lat_sample_ms"])
            ys = [(i + 1) / len(v) for i in range(len(v))]
            ax.plot(v, ys, label=f"{r['target']} @ {step['offered_deliveries_per_s']:,.0f}/s")
        ax.axvline(100, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("delivery latency ms (send → receive)")
        ax.set_ylabel("fraction of deliveries")
        ax.set_title("Fan-out latency distribution at each server's best passing step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(outdir / "fanout_latency_cdf.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append("fanout_latency_cdf.png")
    ing = res.get("ingest") or []
    if ing:
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in ing:
            pts = sorted((s["offered_msgs_per_s"], s["acked_per_s"], s["p99_ms"]) for s in r["steps"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{r['target']} acked/s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered msg/s")
        ax.set_ylabel("acked msg/s")
        ax.set_title("Ingest: acked vs offered")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.savefig(outdir / "ingest_throughput.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        made.append("ingest_throughput.png")
    return made
