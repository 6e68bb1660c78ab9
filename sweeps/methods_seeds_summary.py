"""One Markdown table of the methods on both models, from the tables.csv files `sparsebench-tables` wrote.

    python sweeps/methods_seeds_summary.py docs/data/methods_seeds/smollm2_h200/tables.csv docs/data/methods_seeds/gemma3_h200/tables.csv

Columns: each file's model × each sparsity, in the order given; cells mean ± std (n) as in the
per-model tables, `*` / `~` for beyond / within noise against that file's baseline (its p values).
Prints the table (README's methods table).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from sparsebench.analysis.replicates import DEFAULT_ALPHA  # the threshold sparsebench-tables marks with


def cell(row: dict, column: str) -> str:
    value = row.get(column, "")
    if not value:
        return ""
    n = int(row.get(f"{column} n") or 1)
    text = f"{float(value):,.1f}"
    if n > 1 and row.get(f"{column} std"):
        text += f" ± {float(row[f'{column} std']):,.1f} ({n})"
    p = row.get(f"{column} p vs baseline")
    if p:
        text += " *" if float(p) < DEFAULT_ALPHA else " ~"
    return text


def main(paths: list[str]) -> None:
    columns, rows = [], {}
    for path in paths:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            measures = [name for name in reader.fieldnames if name not in ("model", "method", "mean") and not name.endswith((" std", " n", " p vs baseline"))]
            for row in reader:
                for measure in measures:
                    key = (row["model"], measure)
                    if key not in columns:
                        columns.append(key)
                    rows.setdefault(row["method"], {})[key] = cell(row, measure)
    header = ["method", *[f"{model} {measure}" for model, measure in columns]]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(columns))
    for method in sorted(rows, key=lambda name: (name != "dense", name)):
        print("| " + " | ".join([method, *[rows[method].get(key, "") for key in columns]]) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2 or not all(Path(path).is_file() for path in sys.argv[1:]):
        raise SystemExit(__doc__)
    main(sys.argv[1:])
