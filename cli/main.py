"""The `harness` command (also `python -m harness`). Exit codes: 0 ok, 2 bad input, 1 a failed run."""

from __future__ import annotations

import argparse
import os
import sys
import time

from harness.errors import BadInput

# The leaderboard columns printed in the terminal (leaderboard.md shows more, leaderboard.csv every number).
TERMINAL_COLUMNS = ("method", "params", "lr", "seeds", "tuned (configs)", "val win rate (judge / gold)", "val KL",
                    "grid edge", "judge win rate [95% CI]", "judge vs best", "gold win rate [95% CI]", "gold vs best",
                    "KL mean / median (per token)")

def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _summary_rows(record) -> list[tuple[str, str]]:
    m = record.metrics
    rows = [("method", f"{record.method} {record.method_params}"),
            ("train pairs" if record.dataset.get("train_prompts") is None else "train prompts (sampled from)",
             str(record.dataset.get("train_examples", record.dataset.get("train_prompts")))),
            ("first / final train loss", f"{m['first_train_loss']:.4f} / {m['final_train_loss']:.4f}")]
    if "win_rate" in m:
        rows += [(f"win rate vs SFT ({m['judge']}, {m['num_prompts']} prompts)",
                  f"{m['win_rate']:.3f} [{m['win_rate_low']:.3f}, {m['win_rate_high']:.3f}]  "
                  f"W/T/L {m['wins']}/{m['ties']}/{m['losses']}")]
        if "gold_reward" in m:
            if m["judge"] != "gold":
                rows += [("win rate vs SFT (gold)", f"{m['gold_win_rate']:.3f} [{m['gold_win_rate_low']:.3f}, "
                                                    f"{m['gold_win_rate_high']:.3f}]")]
            rows += [("gold reward: SFT -> policy", f"{m['gold_reward_sft']:.3f} -> {m['gold_reward']:.3f}")]
        if "proxy_reward" in m:
            agreement = f", agreement with gold {m['proxy_agreement_heldout']:.3f}" if "proxy_agreement_heldout" in m else ""
            rows += [("reward model optimised: SFT -> policy", f"{m['proxy_reward_sft']:.3f} -> {m['proxy_reward']:.3f}, "
                      f"win rate {m['proxy_win_rate']:.3f}{agreement}")]
        if "judge_agreement_heldout" in m:
            rows += [("judge agreement with gold (held-out pairs)", f"{m['judge_agreement_heldout']:.3f}")]
        if m.get("judge_agreement_run") is not None:
            flag = "  FLAG: the judge and gold disagree on this run" if m["judge_gap_flag"] else ""
            rows += [("judge agreement with gold (this run's outputs)", f"{m['judge_agreement_run']:.3f}"),
                     ("judge - gold win rate", f"{m['judge_gold_gap']:+.3f} [{m['judge_gold_gap_low']:+.3f}, "
                                              f"{m['judge_gold_gap_high']:+.3f}]{flag}")]
        if "heldout_pref_accuracy" in m:
            ceiling = f", gold ceiling {m['heldout_pref_ceiling']:.3f}" if "heldout_pref_ceiling" in m else ""
            rows += [(f"held-out preference accuracy ({m['heldout_pairs']} pairs)",
                      f"{m['heldout_pref_accuracy']:.3f} (SFT {m['heldout_pref_accuracy_sft']:.3f}{ceiling})")]
        rows += [(f"KL(policy || SFT), nats ({m['kl_decoding']} samples)",
                  f"{m['kl_to_sft']:.3f} ± {m['kl_to_sft_se']:.3f} se, {m['kl_per_token']:.3f} per token"),
                 ("mean length: SFT -> policy (tokens)", f"{m['mean_length_sft']:.1f} -> {m['mean_length']:.1f}"),
                 ("distinct-2 within a response: SFT -> policy",
                  f"{m['distinct_2_per_response_sft']:.3f} -> {m['distinct_2_per_response']:.3f}"),
                 ("repeat rate: SFT -> policy", f"{m['repeat_rate_sft']:.3f} -> {m['repeat_rate']:.3f}")]
        if m.get("pairs_seen") is not None:
            rows += [("pairs seen in training", f"{m['pairs_seen']:g}")]
        if m.get("samples_trained") is not None:
            rows += [("sampled sequences trained on (x epochs)", f"{m['samples_trained']:g}")]
    if "tokens_trained" in m:
        rows += [("tokens trained / forwarded / generated",
                  f"{m['tokens_trained']:,} / {m['tokens_forwarded']:,} / {m['tokens_generated']:,}")]
    if "wall_time_s" in m:
        rows += [("wall time", f"{m['wall_time_s']:.1f} s")]
    rows += [("run record", f"{record.output_dir}/record.json")]
    return rows


def cmd_train(args) -> int:
    from harness.config import load_config

    cfg = load_config(args.config, args.overrides)  # bad config answers before the pipeline (torch) loads
    from app import pipeline

    record = pipeline.train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under a multi-process launch, one summary, from the main process
        _table(f"run {record.trial_id}", _summary_rows(record))
    return 0


def cmd_eval(args) -> int:
    from app import pipeline

    record = pipeline.evaluate_saved(args.run_dir, args.overrides)
    _table(f"eval {record.trial_id}", _summary_rows(record))
    return 0


def _print_leaderboard(folder, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from evals.leaderboard import write_leaderboard

    rows = write_leaderboard(folder)
    if not rows:
        print(f"{title}: no completed run under {folder} (each record.json says why)")
        return
    table = Table(title=title)
    shown = [c for c in TERMINAL_COLUMNS if c in rows[0]]
    for column in shown:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(row[c] for c in shown))
    # As wide as the cells need: a folded interval is harder to read than a scrolled line.
    width = sum(max(len(column), *(len(row[column]) for row in rows)) + 3 for column in shown) + 1
    Console(width=max(width, Console().width)).print(table)
    print(f"leaderboard (every column): {folder}/leaderboard.md and leaderboard.csv")


def _sweep(spec_name: str, args) -> int:
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    spec, path = load_spec(spec_name)
    started = time.perf_counter()
    root = run_sweep(spec, path, resume=getattr(args, "resume", False), address=getattr(args, "address", None),
                     overrides=args.overrides)
    _print_leaderboard(root, f"{spec.name}: {time.perf_counter() - started:.0f} s")
    _print_report([root], spec.base.get("wandb"))
    return 0


def _print_report(folders, wandb_tree: dict | None = None) -> None:
    from harness.config import WandbConfig

    from app.reporting import report

    markdown, page = report(folders, WandbConfig(**(wandb_tree or {})))
    print(f"report: {markdown} and {page}")


def cmd_report(args) -> int:
    from pathlib import Path

    for folder in args.dirs:
        if not Path(folder).is_dir():
            raise BadInput(f"not a directory: {folder}")
    if len(args.dirs) == 1:  # several folders: one combined report (its table is in it)
        _print_leaderboard(args.dirs[0], f"leaderboard of {args.dirs[0]}")
    _print_report(args.dirs)
    return 0


def cmd_run(args) -> int:
    return _sweep(args.spec or "quickstart", args)


def cmd_sweep(args) -> int:
    return _sweep(args.spec, args)


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    folder = Path(args.dir)
    if not folder.is_dir():
        raise BadInput(f"not a directory: {folder}")
    _print_leaderboard(folder, f"leaderboard of {folder}")
    return 0


def cmd_assets(args) -> int:
    import json

    from app.assets import check_or_write, replay_check

    if args.replay and (args.write or args.cache_dir):
        raise BadInput("harness assets --replay takes neither --write nor --cache-dir")
    report, code = replay_check() if args.replay else check_or_write(args.write, args.cache_dir)
    print(json.dumps(report, indent=1))
    return code


def cmd_methods(args) -> int:
    import methods
    from rich.console import Console
    from rich.table import Table

    table = Table(title="methods")
    for column in ("method", "facts", "parameter", "default", "sweep", "bounds", "description"):
        table.add_column(column)
    for name, cls in methods.available().items():
        facts = f"{cls.kind}{', reference-free' if cls.reference_free else ''}; consumes {', '.join(sorted(cls.consumes))}"
        for i, (param, info) in enumerate(cls.hyperparameters().items()):
            bounds = " ".join(f"{k} {v}" for k, v in info["bounds"].items())
            table.add_row(name if i == 0 else "", facts if i == 0 else "", param, str(info["default"]),
                          str(info["sweep"]), bounds, info["description"])
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description="Train and compare preference-alignment methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the main job: a sweep spec end to end, then the leaderboard (no SPEC: quickstart)")
    run.add_argument("spec", nargs="?")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every trial's config")
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="run a sweep spec on Ray Tune (local, or a cluster with --address/RAY_ADDRESS)")
    sweep.add_argument("spec", help="a shipped spec name (sweeps/specs/) or a YAML path")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    sweep.add_argument("--resume", action="store_true", help="resume an interrupted sweep from its trials' checkpoints")
    sweep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    sweep.set_defaults(func=cmd_sweep)
    board = sub.add_parser("leaderboard", help="regenerate leaderboard files from the run records under DIR")
    board.add_argument("dir", nargs="?", default="outputs")
    board.set_defaults(func=cmd_leaderboard)
    report = sub.add_parser("report", help="the comparison report (markdown + self-contained HTML + figures, and a "
                            "W&B summary run) from the run records under DIR(s)")
    report.add_argument("dirs", nargs="*", metavar="DIR", default=["outputs/sweeps/quickstart"],
                        help="sweep folders or folders of records (default: the quickstart's, as `harness run` writes it)")
    report.set_defaults(func=cmd_report)
    train = sub.add_parser("train", help="one run: train, eval, record")
    train.add_argument("--config", help="YAML config file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. method.beta=0.1")
    train.set_defaults(func=cmd_train)
    evaluate = sub.add_parser("eval", help="re-evaluate a trained run (eval.* overrides allowed)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("overrides", nargs="*", metavar="eval.KEY=VALUE")
    evaluate.set_defaults(func=cmd_eval)
    sub.add_parser("methods", help="list methods and their hyperparameters").set_defaults(func=cmd_methods)
    assets = sub.add_parser("assets", help="rebuild the embedded task's shipped assets here and compare them with the "
                                           "shipped copies (--write: replace them)")
    assets.add_argument("--write", action="store_true", help="replace the shipped copies with this machine's build")
    assets.add_argument("--replay", action="store_true", help="replay only the first steps of each build and compare "
                                                              "them with what the build recorded (seconds, not minutes)")
    assets.add_argument("--cache-dir", help="build into this folder and keep it (default: a temp folder)")
    assets.set_defaults(func=cmd_assets)
    return parser


def _one_line_warnings() -> None:
    """The harness's own warnings (a damaged cache entry rebuilt, W&B gone offline, rows skipped) as one line
    each on stderr; a library's keep Python's format, which names where they come from."""
    import warnings
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ours = [root / package for package in ("harness", "app", "evals", "methods", "sweeps", "cli")]
    default = warnings.formatwarning
    if getattr(default, "harness_one_line", False):  # main() called again in this process: installed already
        return

    def formatted(message, category, filename, lineno, line=None):
        if any(Path(filename).resolve().is_relative_to(package) for package in ours):
            return f"harness: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatted.harness_one_line = True
    warnings.formatwarning = formatted


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    if getattr(args, "spec", None) and "=" in args.spec:  # `harness run key=value` with no spec
        args.overrides.insert(0, args.spec)
        args.spec = None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars: stderr is for errors
    try:
        return args.func(args)
    except BadInput as error:
        print(f"harness: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the record (if any) holds the traceback
        print(f"harness: run failed: {type(error).__name__}: {error}", file=sys.stderr)
        if os.environ.get("HARNESS_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
