#!/usr/bin/env python3
"""What the label columns cost SQLite itself: 300,000 rows shaped like the NetFlow worst
case's (one interval, distinct address pairs, key order) upserted into a table with the
embedded store's key and counters and N empty text label columns, by one
`INSERT ... SELECT` (no per-row binding: the engine's own work), with 26 label columns
(the store's, schema version 6) and with none. CPU seconds (process time) per run, best
of three. Last line: sqlite_label_columns_cost_ratio=<26 columns / none>.

    python3 scripts/bench-sqlite-labels.py [rows]
"""
import os
import sqlite3
import sys
import tempfile
import time


def run(path, labels, rows):
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA cache_size=-32768")
    cols = "".join(f", l{i} TEXT NOT NULL" for i in range(labels))
    vals = "".join(", ''" for _ in range(labels))
    c.execute(
        "CREATE TABLE flows (interval_start INTEGER NOT NULL, interval_s INTEGER NOT NULL,"
        " observer TEXT NOT NULL, proto INTEGER NOT NULL, local_addr TEXT NOT NULL,"
        " remote_addr TEXT NOT NULL, responder_port INTEGER NOT NULL,"
        " local_initiated INTEGER NOT NULL, service_addr TEXT NOT NULL,"
        " service_port INTEGER NOT NULL, bytes_out INTEGER, packets_out INTEGER,"
        " bytes_in INTEGER, packets_in INTEGER, conns_opened INTEGER, conns_closed INTEGER,"
        f" cost_usd REAL{cols}, remote_observed INTEGER NOT NULL,"
        " local_prefix_len INTEGER NOT NULL, remote_prefix_len INTEGER NOT NULL,"
        " PRIMARY KEY (interval_start, observer, proto, local_addr, remote_addr,"
        " responder_port, local_initiated, service_addr, service_port, local_prefix_len,"
        " remote_prefix_len)) WITHOUT ROWID"
    )
    c.execute("CREATE TEMP TABLE src (a TEXT, b TEXT)")
    c.executemany(
        "INSERT INTO temp.src VALUES (?, ?)",
        sorted(
            (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", f"172.{16 + (i & 15)}.{i & 255}.0")
            for i in range(rows)
        ),
    )
    c.commit()
    t = time.process_time()
    c.execute(
        "INSERT INTO flows SELECT 1000, 10, '10.0.0.1/0', 6, a, b, 443, 1, '', 0,"
        f" 1, 2, 3, 4, 5, 6, 0.0{vals}, 0, 24, 24 FROM temp.src WHERE true"
        " ON CONFLICT DO UPDATE SET bytes_out = bytes_out + excluded.bytes_out"
    )
    c.commit()
    s = time.process_time() - t
    c.close()
    return s


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        path = os.path.join(d, "labels.sqlite")
        best = {}
        for labels in (26, 0):
            best[labels] = min(run(path, labels, rows) for _ in range(3))
            print(f"{rows} rows, {labels} label columns: {best[labels]:.3f} s CPU (best of 3)")
    print(f"sqlite version {sqlite3.sqlite_version}")
    print(f"sqlite_label_columns_cost_ratio={best[26] / best[0]:.2f}")


if __name__ == "__main__":
    main()
