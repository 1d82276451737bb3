"""`harness report`: write the comparison report beside the records, and log it as one W&B summary run
(job_type "report", in the spec's group; offline unless credentials are present, like every run)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from evals.report import write_report
from harness.config import WandbConfig
from harness.tracking import wandb_mode


def _group(folder: Path) -> str:
    spec = folder / "spec.json"
    return json.loads(spec.read_text()).get("name", folder.name) if spec.is_file() else folder.name


def report(folders: list[str | Path], wandb: WandbConfig | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html beside the first folder's leaderboard; returns their paths."""
    folders = [Path(f) for f in folders]
    markdown, page, board, figures = write_report(folders)
    cfg = wandb or WandbConfig()
    mode = wandb_mode(cfg)
    if mode != "disabled" and not board.empty:
        import wandb as wb
        from PIL import Image

        run = wb.init(project=cfg.project, entity=cfg.entity, group=cfg.group or _group(folders[0]), job_type="report",
                      name=f"report-{_group(folders[0])}", dir=str(markdown.parent), mode=mode, reinit="create_new",
                      settings=wb.Settings(silent=True, console="off"))
        table = board.drop(columns=[c for c in board.columns if board[c].map(lambda v: isinstance(v, (list, dict))).any()])
        run.log({"leaderboard": wb.Table(dataframe=table.astype(str)),
                 **{f"figures/{f.name}": wb.Image(Image.open(io.BytesIO(f.png)), caption=f.title) for f in figures}})
        run.summary["report_md"], run.summary["records"] = str(markdown), len(board)
        run.finish()
        wb.teardown()  # run.finish() can return before the offline file is flushed
    return markdown, page
