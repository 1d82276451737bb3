"""`harness report`: write the comparison report beside the records, and log it as one W&B summary run
(job_type "report", in the spec's group; offline unless credentials are present, like every run)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from evals.report import write_report
from harness.config import WandbConfig
from harness.tracking import Tracker


def _group(folder: Path) -> str:
    spec = folder / "spec.json"
    return json.loads(spec.read_text()).get("name", folder.name) if spec.is_file() else folder.name


def report(folders: list[str | Path], wandb: WandbConfig | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html beside the first folder's leaderboard; returns their paths."""
    folders = [Path(f) for f in folders]
    markdown, page, board, figures = write_report(folders)
    group = _group(folders[0])
    tracker = Tracker(markdown.parent, wandb or WandbConfig(), name=f"report-{group}", group=group, job_type="report",
                      config={"folders": [str(f) for f in folders]}, enabled=not board.empty)
    if tracker.run is not None:  # W&B objects, not scalars: logged on the run itself, not the local JSONL
        import wandb as wb
        from PIL import Image

        table = board.drop(columns=[c for c in board.columns if board[c].map(lambda v: isinstance(v, (list, dict))).any()])
        tracker.log_objects({"leaderboard": wb.Table(dataframe=table.astype(str)),
                             **{f"figures/{f.name}": wb.Image(Image.open(io.BytesIO(f.png)), caption=f.title)
                                for f in figures}}, summary={"report_md": str(markdown), "records": len(board)})
    tracker.finish()
    return markdown, page
