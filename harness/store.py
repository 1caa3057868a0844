"""The run folder: everything needed to re-render a run's report or compare it with another.

```
reports/<suite>-<timestamp>/
  suite.yaml      the suite as it was run
  results.csv     one row per test x model x metric [x param]: test, model, param, metric, value, n
  summary.json    suite, seed, device, versions, timings, cases, models, gates, exit code
  report.md       the tables, as the terminal shows them
  errors.log      tracebacks of internal errors, if any
```
Every file is written atomically (a temporary file renamed into place), after each case, so
an interrupted run keeps what it finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import HarnessError

RESULT_COLUMNS = ["test", "model", "param", "metric", "value", "n"]


def atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def default_run_dir(suite_name: str, root: Path = Path("reports")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{suite_name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{suite_name}-{stamp}-{n}"
    return path


class RunStore:
    """Reads and writes one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ writing

    def create(self, resume: bool = False) -> "RunStore":
        """Make the run folder; an existing run there is an error unless ``resume``."""
        if self.path.exists() and not self.path.is_dir():
            raise HarnessError(f"{self.path} exists and is not a folder",
                               hint="give --out a folder path")
        if not resume and (self.path / "summary.json").exists():
            raise HarnessError(f"{self.path} already holds a run",
                               hint="give --out a new folder, or --resume it to finish the cases "
                                    "it did not")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HarnessError(f"cannot create run folder {self.path}: {exc.strerror}") from None
        return self

    def write_suite(self, text: str) -> None:
        atomic_write(self.path / "suite.yaml", text)

    def write_results(self, records: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for rec in records:
            row = dict(rec)
            row["value"] = repr(float(rec["value"]))
            writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})
        atomic_write(self.path / "results.csv", buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / "summary.json",
                     json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, text)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` (a path inside the run folder, such as ``figures/t/m/x.png``)."""
        target = (self.path / name).resolve()
        if self.path.resolve() not in target.parents:
            raise ValueError(f"{name!r} is outside the run folder")
        atomic_write(target, data)

    # ------------------------------------------------------------------ reading

    def check(self) -> None:
        if not self.path.is_dir():
            raise HarnessError(f"{self.path} is not a run folder (no such folder)",
                               hint="give the folder a 'harness run' wrote, e.g. reports/<suite>-<time>")
        for name in ("summary.json", "results.csv", "suite.yaml"):
            if not (self.path / name).is_file():
                raise HarnessError(f"{self.path} is not a complete run folder ({name} is missing)",
                                   hint="give the folder a 'harness run' wrote")

    def summary(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise HarnessError(f"{self.path / 'summary.json'} cannot be read: {exc}") from None

    def suite_text(self) -> str:
        return (self.path / "suite.yaml").read_text(encoding="utf-8")

    def results(self):
        """The results as a pandas DataFrame with :data:`RESULT_COLUMNS`."""
        import pandas as pd

        path = self.path / "results.csv"
        try:
            df = pd.read_csv(path, dtype={"test": str, "model": str, "param": str, "metric": str},
                             keep_default_na=False, na_values={"value": ["nan", "NaN", ""]})
        except (OSError, ValueError) as exc:
            raise HarnessError(f"{path} cannot be read: {exc}") from None
        missing = [c for c in ("test", "model", "metric", "value") if c not in df.columns]
        if missing:
            raise HarnessError(f"{path} lacks the column(s) {', '.join(missing)}")
        if "param" not in df.columns:
            df["param"] = ""
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        return df

    # ------------------------------------------------------------------ chunks and ledger

    LEDGER = "ledger"
    CHUNKS = "chunks"

    @staticmethod
    def chunk_name(order: int, chunk: int) -> str:
        return f"c{order:04d}-k{chunk:05d}"

    def write_chunk(self, order: int, out: Any) -> None:
        """Save a finished chunk: its files, its ledger rows (Parquet), then its record (the
        record last: a chunk counts as done once its record is there)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .records import ledger_schema

        for path, blob in out.files.items():
            self.write_bytes(path, blob)
        name = self.chunk_name(order, out.record.chunk)
        table = pa.Table.from_pandas(out.ledger, schema=ledger_schema(), preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write(self.path / self.LEDGER / f"{name}.parquet", sink.getvalue().to_pybytes())
        record = {**out.record.as_dict(), "order": order, "error": out.error}
        atomic_write(self.path / self.CHUNKS / f"{name}.json",
                     json.dumps(record, indent=1, default=str) + "\n")

    def chunk_records(self) -> dict[tuple[int, int], Any]:
        """Every saved chunk's record, by (case order, chunk index)."""
        from .records import ChunkRecord

        out = {}
        folder = self.path / self.CHUNKS
        if not folder.is_dir():
            return out
        for path in sorted(folder.glob("c*-k*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                rec = ChunkRecord.from_dict(data)
                order = int(data["order"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise HarnessError(f"{path} cannot be read: {exc}",
                                   hint="delete it to run that chunk again") from None
            if not (self.path / self.LEDGER / f"{path.stem}.parquet").is_file():
                continue
            rec.info["error"] = data.get("error")
            out[order, rec.chunk] = rec
        return out

    def ledger(self, order: int | None = None):
        """The ledger rows of case ``order`` (all cases when None), as a pandas DataFrame."""
        import pandas as pd
        import pyarrow.parquet as pq

        from .records import empty_ledger

        folder = self.path / self.LEDGER
        pattern = f"c{order:04d}-k*.parquet" if order is not None else "c*-k*.parquet"
        files = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if not files:
            return empty_ledger()
        try:
            frames = [pq.read_table(f).to_pandas() for f in files]
        except Exception as exc:
            raise HarnessError(f"{folder} holds a ledger file that cannot be read: {exc}",
                               hint="the run folder is damaged; run the suite again") from None
        return pd.concat(frames, ignore_index=True)
