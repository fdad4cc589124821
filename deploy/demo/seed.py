"""Create the demo's shop.db beside the demo config: a few orders and customers."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

ORDERS = [
    (1001, "Ada Lovelace", 129.90),
    (1002, "Grace Hopper", 48.00),
    (1003, "Edsger Dijkstra", 310.25),
    (1004, "Barbara Liskov", 77.10),
    (1005, "Ken Thompson", 15.99),
]
CUSTOMERS = [
    ("Bob Builder", "bob@example.test", 120.50),
    ("Carol Client", "carol@example.test", -15.00),
    ("Dave Debtor", "dave@example.test", 980.00),
]


def seed(path: Path, *, orders: bool = True) -> None:
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total REAL NOT NULL)")
        db.execute("CREATE TABLE customers (name TEXT NOT NULL, email TEXT NOT NULL, balance REAL NOT NULL)")
        if orders:
            db.executemany("INSERT INTO orders VALUES (?, ?, ?)", ORDERS)
        db.executemany("INSERT INTO customers VALUES (?, ?, ?)", CUSTOMERS)
    db.close()


if __name__ == "__main__":
    seed(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("shop.db"))
