"""Reading and writing the diagnostics' CSV files."""

import csv
import math
from pathlib import Path


def write_csv(rows: list[dict], columns: list[str], path: Path) -> Path:
    """Write `rows` (dicts with at least `columns`) to `path`, floats to 6 significant digits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(row[k]) for k in columns})
    return path


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV, with every value that reads as a number turned into one."""
    with open(path, newline="") as stream:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(stream)]


def _parse(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
