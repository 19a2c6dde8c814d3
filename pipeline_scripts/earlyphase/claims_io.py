"""Writers and reader of the claims table: HDF5 (``claims.h5``, read back by ``read_h5``), TSV and
a self-contained HTML table (``docs/results-schema.md``, "Claims table")."""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .claim import (
    _FLOAT_COLUMNS,
    COLUMNS,
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    NOT_RUN,
    REPRODUCED,
    SCHEMA,
    VERDICT_RULES,
    Claim,
    Scale,
    scale_text,
    verdict_counts,
)


# ---- writers and reader ------------------------------------------------------------------------
def _atomic(path, write) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def write_h5(path, rows: list[Claim], scales: dict[str, Scale], lines: list[str]) -> None:
    """/claims/<column> (one dataset per column, one entry per row) and root attributes."""

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["scale_text"] = "\n".join(lines)
            f.attrs["scales"] = json.dumps({n: asdict(s) for n, s in scales.items()})
            f.attrs["verdict_rules"] = json.dumps(VERDICT_RULES)
            f.attrs["verdict_counts"] = json.dumps(verdict_counts(rows))
            g = f.create_group("claims")
            for col in COLUMNS:
                values = [getattr(r, col) for r in rows]
                if col in _FLOAT_COLUMNS:
                    g.create_dataset(col, data=np.asarray(values, dtype=np.float64))
                elif col == "n":
                    g.create_dataset(col, data=np.asarray(values, dtype=np.int64))
                else:
                    g.create_dataset(col, data=values, dtype=h5py.string_dtype())

    _atomic(path, write)


def read_h5(path) -> tuple[list[dict], dict]:
    """(rows as dicts of the columns, root attributes)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not an {SCHEMA} file")
        g = f["claims"]
        cols = {c: (g[c].asstr()[()] if g[c].dtype.kind == "O" else g[c][()]) for c in g}
        n = len(cols["id"])
        rows = [
            {c: (v[i].item() if hasattr(v[i], "item") else v[i]) for c, v in cols.items()}
            for i in range(n)
        ]
        return rows, dict(f.attrs)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value).replace("\t", " ").replace("\n", " ")


def write_tsv(path, rows: list[Claim]) -> None:
    """One header line and one line per claim, every column (machine-readable)."""

    def write(tmp):
        lines = ["\t".join(COLUMNS)]
        lines += ["\t".join(_cell(getattr(r, c)) for c in COLUMNS) for r in rows]
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")

    _atomic(path, write)


_VERDICT_COLOURS = {
    REPRODUCED: "#d8f0d8",
    NOT_REPRODUCED: "#f6d5d5",
    NOT_COMPARABLE: "#f7ecd0",
    NOT_RUN: "#e6e6e6",
}


def write_html(path, rows: list[Claim], lines: list[str]) -> None:
    """A self-contained HTML page: the run's scale, verdict counts and rules, then the table."""
    e = html.escape
    counts = verdict_counts(rows)
    head = [
        "Claim",
        "Paper",
        "Network",
        "What",
        "Paper value",
        "This run",
        "Verdict",
        "Rule",
        "Note",
        "Scale",
    ]
    body = []
    for r in rows:
        cells = [
            r.id,
            r.paper_ref,
            r.network,
            r.description,
            f"{e(r.paper)}<br><small>{e(r.source)}</small>",
            r.measured,
            r.verdict,
            r.rule,
            r.note,
            r.scale,
        ]
        tds = "".join(
            f"<td>{c}</td>" if i == 4 else f"<td>{e(str(c))}</td>" for i, c in enumerate(cells)
        )
        body.append(f'<tr style="background:{_VERDICT_COLOURS[r.verdict]}">{tds}</tr>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Paper claims beside this run</title>
<style>
body {{ font-family: sans-serif; font-size: 13px; margin: 1em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 3px 6px; vertical-align: top; text-align: left; }}
th {{ background: #333; color: #fff; position: sticky; top: 0; }}
small {{ color: #555; }}
</style></head><body>
<h2>The Early Phase of Neural Network Training: paper claims beside this run</h2>
<h3>Scale of this run</h3>
<ul>{"".join(f"<li>{e(line)}</li>" for line in lines)}</ul>
<p><b>{" · ".join(f"{n} {e(v)}" for v, n in counts.items())}</b></p>
<h3>Verdicts</h3>
<ul>{"".join(f"<li><b>{e(v)}</b>: {e(t)}</li>" for v, t in VERDICT_RULES.items())}</ul>
<table id="claims">
<thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""

    def write(tmp):
        Path(tmp).write_text(page, encoding="utf-8")

    _atomic(path, write)


def write_all(rows: list[Claim], scales: dict[str, Scale], settings: dict, *, h5, tsv, html_path):
    lines = scale_text(scales, settings)
    write_h5(h5, rows, scales, lines)
    write_tsv(tsv, rows)
    write_html(html_path, rows, lines)
