#!/usr/bin/env python3
"""Turns compare.sh's results.jsonl into a Markdown table: etcd, etch, etch/etcd.

Each line of results.jsonl is {"workload", "server", "round", ..., "result": {...}}, the
result being what etch-bench printed. With several rounds every cell is the median.
"""

import json
import statistics
import sys
from collections import defaultdict


def load(path):
    runs = defaultdict(list)
    for line in open(path):
        line = line.strip()
        if line:
            r = json.loads(line)
            runs[(r["workload"], r["server"])].append(r)
    return runs


def prom(path, name):
    """A sample's value from a Prometheus text file, or None."""
    try:
        for line in open(path):
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    except OSError:
        pass
    return None


def main(path):
    runs = load(path)
    rows = []

    def get(workload, server, f):
        vals = []
        for r in runs.get((workload, server), []):
            try:
                v = f(r)
            except (KeyError, TypeError, ZeroDivisionError):
                v = None
            if v is not None:
                vals.append(v)
        return statistics.median(vals) if vals else None

    def row(label, better, workload, f, fmt="{:,.0f}"):
        etcd, etch = get(workload, "etcd", f), get(workload, "etch", f)
        if etcd is None and etch is None:
            return
        ratio = f"{etch / etcd:.2f}" if etcd and etch is not None else "–"
        cell = lambda v: "–" if v is None else fmt.format(v)
        rows.append(f"| {label} | {better} | {cell(etcd)} | {cell(etch)} | {ratio} |")

    res = lambda k: (lambda r: r["result"][k])
    ms = "{:.2f}"
    floor = [r["result"]["p50_ms"] for r in runs.get(("fdatasync", "disk"), [])]
    if floor:
        print(f"fdatasync (4 KiB pwrite + fdatasync) p50: "
              + ", ".join(f"{v:.3f} ms" for v in floor))
        print()

    def fsync_per_op(r):
        n = prom(r["metrics"], "etcd_disk_wal_fsync_duration_seconds_count")
        return r["result"]["ops"] / n if n else None

    def fsync_mean_ms(r):
        n = prom(r["metrics"], "etcd_disk_wal_fsync_duration_seconds_count")
        s = prom(r["metrics"], "etcd_disk_wal_fsync_duration_seconds_sum")
        return s / n * 1000 if n else None

    def cpu_us_per_op(r):
        return r["server_cpu_s"] / r["result"]["ops"] * 1e6

    def kb_written_per_op(r):
        if "write_bytes" not in r:
            return None
        return r["write_bytes"] / r["result"]["ops"] / 1000

    print("| workload | better | etcd 3.5.1 | etch | etch/etcd |")
    print("|---|---|---:|---:|---:|")
    for name, label in [("put-1", "put, 1 client"), ("put-16", "put, 16 clients"),
                        ("put-256", "put, 256 clients")]:
        row(f"{label}: puts/s", "higher", name, res("throughput"))
        row(f"{label}: p50 ms", "lower", name, res("p50_ms"), ms)
        row(f"{label}: p99 ms", "lower", name, res("p99_ms"), ms)
        row(f"{label}: max ms", "lower", name, res("max_ms"), ms)
        row(f"{label}: puts per WAL fsync", "higher", name, fsync_per_op, "{:.1f}")
        row(f"{label}: mean WAL fsync ms", "lower", name, fsync_mean_ms, ms)
        row(f"{label}: server CPU µs per put", "lower", name, cpu_us_per_op, "{:.0f}")
        row(f"{label}: KB written per put (/proc/PID/io)", "lower", name, kb_written_per_op,
            "{:.2f}")
    if floor:
        f0 = statistics.median(floor)
        row("put, 1 client: p50 / fdatasync p50", "lower", "put-1",
            lambda r: r["result"]["p50_ms"] / f0, ms)
    for name, label in [("range-s", "get, serializable, 16 clients"),
                        ("range-l", "get, linearizable, 16 clients"),
                        ("txn-put", "txn CAS put, 16 clients")]:
        row(f"{label}: ops/s", "higher", name, res("throughput"))
        row(f"{label}: p50 ms", "lower", name, res("p50_ms"), ms)
        row(f"{label}: p99 ms", "lower", name, res("p99_ms"), ms)
        row(f"{label}: server CPU µs per op", "lower", name, cpu_us_per_op, "{:.0f}")
    row("kube mix, 16 clients: ops/s (all kinds)", "higher", "kube-mix", res("throughput"))
    row("kube mix: p99 ms (all kinds)", "lower", "kube-mix", res("p99_ms"), ms)
    row("kube mix: max ms (all kinds)", "lower", "kube-mix", res("max_ms"), ms)
    for kind in ["update", "create", "delete", "event", "get", "count", "list", "lease_grant"]:
        k = lambda kind: (lambda r: r["result"]["kinds"][kind])
        row(f"kube mix: {kind} ops/s", "higher", "kube-mix",
            lambda r, kind=kind: k(kind)(r)["throughput"], "{:,.1f}")
        row(f"kube mix: {kind} p99 ms", "lower", "kube-mix",
            lambda r, kind=kind: k(kind)(r)["p99_ms"], ms)
    row("kube mix: watch events/s received (3 watches, prev_kv)", "higher", "kube-mix",
        res("watch_events_per_s"))
    row("kube mix: server CPU µs per op", "lower", "kube-mix", cpu_us_per_op, "{:.0f}")
    row("LIST: objects", "=", "list", res("objects"))
    row("LIST: MiB of keys + values", "=", "list", lambda r: r["result"]["bytes"] / 2**20,
        "{:,.1f}")
    row("LIST: seconds per full LIST (pages of 500, pinned revision)", "lower", "list",
        res("seconds_per_list"), "{:.3f}")
    row("LIST: writing the objects, puts/s (64 clients)", "higher", "list",
        res("load_puts_per_s"))
    row("watch: delivery p50 ms (from put ack)", "lower", "watch", res("p50_ms"), ms)
    row("watch: delivery p90 ms", "lower", "watch", res("p90_ms"), ms)
    row("watch: delivery p99 ms", "lower", "watch", res("p99_ms"), ms)
    row("watch: delivery max ms", "lower", "watch", res("max_ms"), ms)
    row("watch: delivery p50 ms (from put sent)", "lower", "watch", res("from_send_p50_ms"), ms)
    row("watch: events missed", "lower", "watch", res("events_missed"))
    row("watch: creating the watchers, s", "lower", "watch", res("setup_seconds"), "{:.3f}")
    row("failover: SIGKILL of the leader → first acknowledged write, ms", "lower",
        "failover", res("ready_ms"), "{:,.0f}")
    row("many keys: load, puts/s (256 clients)", "higher", "big", res("throughput"))
    row("many keys: RSS after load, MiB", "lower", "big", lambda r: r["rss_kib"] / 1024,
        "{:,.0f}")
    row("many keys: of which anonymous, MiB", "lower", "big",
        lambda r: r["rss_anon_kib"] / 1024, "{:,.0f}")
    row("many keys: of which file-backed (mmap), MiB", "lower", "big",
        lambda r: r["rss_file_kib"] / 1024, "{:,.0f}")
    row("many keys: data dir, MiB", "lower", "big", lambda r: r["disk_kib"] / 1024, "{:,.0f}")
    row("many keys: restart after SIGKILL, ms to first linearizable get", "lower", "big",
        lambda r: r["restart_crash_ms"], "{:,.0f}")
    row("many keys: restart after SIGTERM, ms to first linearizable get", "lower", "big",
        lambda r: r["restart_clean_ms"], "{:,.0f}")
    row("many keys: RSS after restart, MiB", "lower", "big",
        lambda r: r["rss_after_restart_kib"] / 1024, "{:,.0f}")
    for r in rows:
        print(r)
    keys = [r.get("keys") for r in runs.get(("big", "etch"), [])]
    if keys:
        print(f"\n(many keys = {keys[0]:,} keys of 32 B with 256 B values)")


if __name__ == "__main__":
    main(sys.argv[1])
