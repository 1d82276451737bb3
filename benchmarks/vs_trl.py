"""Side by side: TRL 1.16's DPOTrainer and the harness's DPO on the same model, data, batch, lengths and steps.

    python benchmarks/vs_trl.py                          # CPU, every shape, 3 alternations
    python benchmarks/vs_trl.py --shapes short --repeats 1
    python benchmarks/vs_trl.py --device cuda --size 100m   # on a GPU: a ~100M Llama

Every run is a separate process started from here and timed from outside (whole-process wall time: imports,
loading, tokenising, reference log-probs, training, eval); each prints its own train seconds. Harness and
TRL runs alternate, so drift in the machine's speed hits both. Shapes:

  embedded  the embedded task's own shape: its 0.87M-parameter Llama (the shipped SFT model, a 114-token
            vocabulary), its 1,000 training pairs, 8 pairs a step, 150 steps, the reference log-probs already
            cached on both sides (the harness's cache filled by a run before; TRL's precompute_ref_log_probs,
            done in DPOTrainer's constructor, outside train()): a quickstart trial's training, overhead-bound
  short   8 steps with an empty cache (a first quick run)
  epoch   one epoch: 256 pairs, 32 steps, empty cache
  sweep   DPO at 4 betas, each trained one epoch and evaluated on 32 held-out prompts (win rate against the
          SFT model judged by a reward model, plus the held-out pairs' DPO metrics): one `harness sweep`
          (Ray Tune, empty cache) against four sequential TRL runs doing the same (trainer.train,
          trainer.evaluate on the held-out pairs, then policy and SFT samples judged by the same reward model)

Model: a Llama with the real GPT-2 vocabulary (50,257; tied embeddings), 4 layers of width 128 (~7.2M
parameters) on CPU; data: IMDb review text from ../shared/data (positive review continuations preferred to
negative ones), at most 128 tokens per sequence, so neither side truncates. Also printed: the matmul peak
measured in this invocation and the floor it puts under a training step, and the peak memory of the
harness's reference pass against that of one training step (each measured in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BATCH, MAX_LENGTH, MAX_PROMPT_LENGTH, LR = 8, 128, 64, 5e-6
SIZES = {"7m": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4),
         "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12)}
BETAS = (0.01, 0.1, 0.3, 1.0)
EVAL_PROMPTS, MAX_NEW_TOKENS = 32, 32


# ---------------------------------------------------------------- setup (once per invocation)

def build_assets(root: Path, size: str, n_train: int) -> dict:
    import datasets
    import torch
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer_dir, imdb = SHARED / "tokenizers" / "gpt2", SHARED / "imdb" / "aclImdb-test.sample.jsonl"
    if not tokenizer_dir.exists() or not imdb.exists():
        sys.exit(f"vs_trl.py: needs the GPT-2 tokenizer and IMDb sample under {SHARED}")
    tokenizer = GPT2TokenizerFast.from_pretrained(str(tokenizer_dir))
    tokenizer.pad_token = tokenizer.eos_token
    shape = dict(vocab_size=len(tokenizer), tie_word_embeddings=True, max_position_embeddings=256,
                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id, **SIZES[size])
    torch.manual_seed(0)
    policy = LlamaForCausalLM(LlamaConfig(**shape))
    policy.save_pretrained(root / "sft")
    tokenizer.save_pretrained(root / "sft")
    LlamaForSequenceClassification(LlamaConfig(num_labels=1, **shape)).save_pretrained(root / "judge")
    tokenizer.save_pretrained(root / "judge")

    reviews = [json.loads(line) for line in imdb.read_text().split("\n") if line.strip()]
    positive = [r["text"].split() for r in reviews if r["label"] == 1]
    negative = [r["text"].split() for r in reviews if r["label"] == 0]
    rng = random.Random(0)
    count = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    rows = []
    for pos, neg in zip(positive, negative):
        prompt = "Movie review: " + " ".join(pos[:rng.randint(6, 16)])
        chosen = " " + " ".join(pos[len(prompt.split()) - 2: len(prompt.split()) - 2 + rng.randint(20, 70)])
        rejected = " " + " ".join(neg[: rng.randint(20, 70)])
        # fit every sequence in MAX_LENGTH with its EOS, so neither side truncates anything
        while count(prompt + chosen) >= MAX_LENGTH:
            chosen = chosen.rsplit(" ", 1)[0]
        while count(prompt + rejected) >= MAX_LENGTH:
            rejected = rejected.rsplit(" ", 1)[0]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    train, test = rows[:n_train], rows[n_train: n_train + EVAL_PROMPTS]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}) \
        .save_to_disk(str(root / "data"))
    parameters = sum(p.numel() for p in policy.parameters())
    tokens = [count(r["prompt"] + r[side]) + 1 for r in train for side in ("chosen", "rejected")]
    return {"parameters": parameters, "mean_tokens": statistics.mean(tokens), "pairs": len(train)}


EMBEDDED_STEPS, EMBEDDED_LR = 150, 1e-4  # the harness's defaults (train.max_steps, train.learning_rate)


def build_embedded(root: Path) -> dict:
    """The embedded task's SFT model and training pairs, for both sides; the harness's reference cache filled."""
    import datasets

    from harness.config import RunConfig, TaskConfig
    from harness.embedded.build import MODEL_PARAMETERS, prepare_embedded

    assets = prepare_embedded(TaskConfig(), str(root / "cache"))
    datasets.Dataset.from_list(assets.train_pairs).save_to_disk(str(root / "data"))
    (root / "sft").symlink_to(assets.sft_path)
    from app.pipeline import prepare
    from harness.config import load_config

    prepare(load_config(None, embedded_overrides(root / "warm", root)))  # every training pair's reference log-probs
    data = RunConfig().data
    return {"parameters": MODEL_PARAMETERS, "pairs": len(assets.train_pairs), "max_length": data.max_length,
            "shipped_sft": assets.shipped}


def embedded_overrides(out: Path, root: Path) -> list[str]:
    return [f"output_dir={out}", f"cache_dir={root / 'cache'}", "method.name=dpo", "method.beta=0.1",
            f"train.batch_size={BATCH}", f"train.max_steps={EMBEDDED_STEPS}", f"train.learning_rate={EMBEDDED_LR}",
            "train.save_steps=0", "eval.num_prompts=0", "wandb.mode=disabled"]


def harness_embedded(root: Path, out: Path, device: str) -> dict:
    result = timed([sys.executable, "-m", "harness", "train", *embedded_overrides(out, root), f"model.device={device}"])
    record = json.loads((out / "record.json").read_text())
    assert record["metrics"]["reference_cache_hit"], "the embedded shape's reference log-probs were not cached"
    return {**result, "train_s": record["metrics"]["train_time_s"], "steps": record["metrics"]["train_steps"]}


def trl_embedded(root: Path, out: Path, device: str) -> dict:
    return timed([sys.executable, __file__, "--trl-embedded-child", str(root), str(out), device])


def trl_embedded_child(root: Path, out: Path, device: str) -> None:
    """TRL on the embedded shape as a user writes it, the reference log-probs precomputed (in the constructor)."""
    import datasets
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from harness.config import RunConfig

    train = RunConfig().train  # the harness's schedule: warmup ratio, cosine, no weight decay, clip 1.0
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=BATCH, max_length=RunConfig().data.max_length,
                     max_steps=EMBEDDED_STEPS, learning_rate=EMBEDDED_LR, lr_scheduler_type=train.lr_scheduler,
                     warmup_steps=train.warmup_ratio, weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm,
                     beta=0.1, report_to=[], save_strategy="no", logging_steps=10, use_cpu=device == "cpu",
                     bf16=device == "cuda", dataloader_num_workers=0, seed=0, disable_tqdm=True,
                     precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=str(root / "sft"), args=args, processing_class=AutoTokenizer.from_pretrained(str(root / "sft")),
                         train_dataset=datasets.load_from_disk(str(root / "data")))
    started = time.perf_counter()
    trainer.train()
    print(json.dumps({"train_s": time.perf_counter() - started, "steps": trainer.state.global_step}))


def matmul_peak_gflops(device: str) -> float:
    import torch

    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * 2048 ** 3 / best / 1e9


# ---------------------------------------------------------------- one run, in its own process

def timed(command: list[str], env: dict | None = None) -> dict:
    """Run `command`; whole-process seconds, peak RSS (GNU time) and the JSON line the child printed last."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        started = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", stats.name, *command], capture_output=True,
                                text=True, cwd=REPO, env={**os.environ, **(env or {})})
        seconds = time.perf_counter() - started
        peak_kb = stats.read().strip().splitlines()[-1]
    if result.returncode != 0:
        sys.exit(f"vs_trl.py: {' '.join(command[:4])} ... failed:\n{result.stderr[-3000:]}")
    reported = []
    for line in result.stdout.splitlines():
        try:
            reported.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # library logging, e.g. TRL's printed dicts
    reported = [r for r in reported if isinstance(r, dict)]
    return {"wall_s": seconds, "peak_rss_mb": int(peak_kb) / 1024 if peak_kb.isdigit() else None,
            **(reported[-1] if reported else {})}


def harness_train(root: Path, out: Path, steps: int, device: str, beta: float = 0.1, evaluate: bool = False) -> dict:
    command = [sys.executable, "-m", "harness", "train", *harness_overrides(root, device, beta, evaluate),
               f"train.max_steps={steps}", f"output_dir={out}", f"cache_dir={out / 'cache'}"]
    result = timed(command)
    record = json.loads((out / "record.json").read_text())
    return {**result, "train_s": record["metrics"]["train_time_s"], "steps": record["metrics"]["train_steps"]}


def harness_overrides(root: Path, device: str, beta: float, evaluate: bool) -> list[str]:
    return [f"model.path={root / 'sft'}", f"model.device={device}", f"data.source={root / 'data'}",
            "data.eval_split=test", f"data.max_length={MAX_LENGTH}", f"data.max_prompt_length={MAX_PROMPT_LENGTH}",
            "method.name=dpo", f"method.beta={beta}", f"train.batch_size={BATCH}", f"train.learning_rate={LR}",
            "train.save_steps=0", "wandb.mode=disabled",
            f"eval.num_prompts={EVAL_PROMPTS if evaluate else 0}", f"eval.max_new_tokens={MAX_NEW_TOKENS}",
            f"eval.judge={root / 'judge'}"]


def harness_sweep(root: Path, out: Path, steps: int, device: str) -> dict:
    import yaml

    overrides = dict(item.split("=", 1) for item in harness_overrides(root, device, 0.1, evaluate=True))
    base: dict = {}
    for key, value in {**overrides, "train.max_steps": steps}.items():
        section, name = key.split(".", 1)
        base.setdefault(section, {})[name] = value
    spec = {"name": "vs_trl_sweep", "base": base, "grid": {"method.beta": list(BETAS)},
            "resources": {"cpu": 1, "gpu": 1 if device == "cuda" else 0},
            # on CPU, one single-threaded trial per core (what the shipped specs do); on a GPU, one at a time
            "max_concurrent": 1 if device == "cuda" else min(os.cpu_count() or 1, len(BETAS)),
            "storage_path": str(out / "sweep")}
    path = out / "sweep.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    result = timed([sys.executable, "-m", "harness", "sweep", str(path)], env={"HARNESS_CACHE_DIR": str(out / "cache")})
    records = [json.loads(p.read_text()) for p in (out / "sweep").rglob("record.json")]
    return {**result, "train_s": sum(r["metrics"]["train_time_s"] for r in records), "trials": len(records)}


def trl_train(root: Path, out: Path, steps: int, device: str, beta: float = 0.1, evaluate: bool = False) -> dict:
    command = [sys.executable, __file__, "--trl-child", str(root), str(out), str(steps), device, str(beta),
               "1" if evaluate else "0"]
    return timed(command)


def trl_child(root: Path, out: Path, steps: int, device: str, beta: float, evaluate: bool) -> None:
    """One TRL run as a user writes it: DPOTrainer with its default reference model (a frozen copy)."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = datasets.load_from_disk(str(root / "data"))
    tokenizer = AutoTokenizer.from_pretrained(str(root / "sft"))
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                     max_length=MAX_LENGTH, max_steps=steps, learning_rate=LR, beta=beta, report_to=[],
                     save_strategy="no", logging_steps=max(steps // 4, 1), use_cpu=device == "cpu",
                     bf16=device == "cuda", dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = DPOTrainer(model=str(root / "sft"), args=args, processing_class=tokenizer,
                         train_dataset=data["train"], eval_dataset=data["test"] if evaluate else None)
    started = time.perf_counter()
    trainer.train()
    report = {"train_s": time.perf_counter() - started, "steps": trainer.state.global_step}
    if evaluate:  # the harness's eval, done the TRL way: DPO metrics on held-out pairs, then judged samples
        started = time.perf_counter()
        trainer.evaluate()
        sft = type(trainer.model).from_pretrained(str(root / "sft")).to(trainer.model.device).eval()
        judge = AutoModelForSequenceClassification.from_pretrained(str(root / "judge")).to(trainer.model.device).eval()
        prompts = [tokenizer(p)["input_ids"] for p in data["test"]["prompt"]]
        scores = {}
        for name, model in (("policy", trainer.model.eval()), ("sft", sft)):
            texts = []
            for start in range(0, len(prompts), BATCH):
                batch = tokenizer.pad({"input_ids": prompts[start:start + BATCH]}, padding_side="left",
                                      return_tensors="pt").to(model.device)
                with torch.no_grad():
                    generated = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0,
                                               max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
                texts += tokenizer.batch_decode(generated, skip_special_tokens=True)
            encoded = tokenizer(texts, padding=True, return_tensors="pt").to(judge.device)
            with torch.no_grad():
                scores[name] = judge(**encoded).logits[:, 0].tolist()
        wins = sum(a > b for a, b in zip(scores["policy"], scores["sft"]))
        report.update(eval_s=time.perf_counter() - started, win_rate=wins / len(prompts))
    print(json.dumps(report))


# ---------------------------------------------------------------- memory of the reference pass vs a step

def memory_child(root: Path, what: str, device: str) -> None:
    """Peak RSS growth of one reference pass over every pair (at the harness's reference batch size), or of
    one training step, in a process that did nothing else (ru_maxrss is a high-water mark)."""
    import resource

    import methods
    from harness.config import load_config
    from harness.data import Formatter, prepare_examples
    from harness.logps import policy_logps, reference_logps
    from harness.models import load_causal_lm, load_tokenizer
    from harness.sources import load_task
    from harness.trainer import collate_items, sequence_logps_of

    cfg = load_config(None, harness_overrides(root, device, 0.1, evaluate=False))
    tokenizer = load_tokenizer(cfg.model.path, cfg.model)
    method = methods.get("dpo", beta=0.1)
    examples = prepare_examples(load_task(cfg).rows, Formatter(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH),
                                method.consumes).examples
    model = load_causal_lm(cfg.model.path, cfg.model)
    reference = [[-50.0, -50.0] for _ in examples]
    batch = collate_items(list(zip(examples[:BATCH], reference)), tokenizer.pad_token_id)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if what == "reference":
        sequence_logps_of(model, examples, tokenizer.pad_token_id)
    else:
        loss = method.loss(policy_logps(model, batch), reference_logps(batch)).loss
        loss.backward()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"what": what, "peak_growth_mb": grown / 1024}))


# ---------------------------------------------------------------- padding saved by length-grouped batches

def padding_report(root: Path) -> dict:
    """Share of padding in the tokens each pass forwards: training batches of 8 pairs drawn at random (the
    default) or length-grouped (train.group_by_length), and the reference pass over single sequences in
    batches of 64 in file order or in same-length batches (what sequence_logps_of does)."""
    import itertools

    from accelerate.data_loader import SeedableRandomSampler

    import methods
    from harness.config import load_config
    from harness.data import Formatter, prepare_examples
    from harness.models import load_tokenizer
    from harness.sources import load_task
    from harness.trainer import example_lengths, length_grouped

    cfg = load_config(None, harness_overrides(root, "cpu", 0.1, evaluate=False))
    tokenizer = load_tokenizer(cfg.model.path, cfg.model)
    examples = prepare_examples(load_task(cfg).rows, Formatter(tokenizer, MAX_LENGTH, MAX_PROMPT_LENGTH),
                                methods.get("dpo").consumes).examples
    pair_lengths = [[len(p) + len(c) for p, c, _ in example] for example in examples]
    sequence_lengths = [length for pair in pair_lengths for length in pair]

    def padding(batches: list[list[list[int]]]) -> float:  # batches of rows' sequence lengths
        real = sum(sum(sum(row) for row in batch) for batch in batches)
        padded = sum(max(max(row) for row in batch) * sum(len(row) for row in batch) for batch in batches)
        return 1 - real / padded

    def in_batches(order: list[int], lengths: list[list[int]], size: int) -> list[list[list[int]]]:
        return [[lengths[i] for i in order[start:start + size]] for start in range(0, len(order), size)]

    singles = [[length] for length in sequence_lengths]
    by_length = sorted(range(len(singles)), key=lambda i: sequence_lengths[i])
    same_length = [[singles[i] for i in group[start:start + 64]]
                   for _, group in ((k, list(g)) for k, g in itertools.groupby(by_length, key=lambda i: sequence_lengths[i]))
                   for start in range(0, len(group), 64)]
    return {
        "train_random": padding(in_batches(list(SeedableRandomSampler(range(len(examples)), data_seed=0)), pair_lengths, BATCH)),
        "train_grouped": padding(in_batches(list(length_grouped(example_lengths(examples), BATCH, 0)), pair_lengths, BATCH)),
        "reference_file_order": padding(in_batches(list(range(len(singles))), singles, 64)),
        "reference_same_length": padding(same_length),
    }


# ---------------------------------------------------------------- the comparison

def summarise(name: str, harness: list[dict], trl: list[dict], pairs_per_run: int) -> dict:
    med = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    row = {"shape": name, "runs_each": len(harness)}
    for side, runs in (("harness", harness), ("trl", trl)):
        row[f"{side}_wall_s"] = med(runs, "wall_s")
        row[f"{side}_train_s"] = med(runs, "train_s")
        row[f"{side}_pairs_per_s"] = pairs_per_run / med(runs, "train_s")
        row[f"{side}_peak_rss_mb"] = max((r["peak_rss_mb"] or 0) for r in runs)
    row["wall_ratio"] = row["trl_wall_s"] / row["harness_wall_s"]
    row["train_ratio"] = row["trl_train_s"] / row["harness_train_s"]
    row["wall_ratio_range"] = [min(t["wall_s"] for t in trl) / max(h["wall_s"] for h in harness),
                               max(t["wall_s"] for t in trl) / min(h["wall_s"] for h in harness)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default=None, choices=sorted(SIZES), help="default: 7m on CPU, 100m on CUDA")
    parser.add_argument("--shapes", default="embedded,short,epoch,sweep")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of harness and TRL per shape")
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir, removed)")
    parser.add_argument("--trl-child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--trl-embedded-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_embedded_child:
        root, out, device = args.trl_embedded_child
        return trl_embedded_child(Path(root), Path(out), device)
    if args.trl_child:
        root, out, steps, device, beta, evaluate = args.trl_child
        return trl_child(Path(root), Path(out), int(steps), device, float(beta), evaluate == "1")
    if args.memory_child:
        root, what, device = args.memory_child
        return memory_child(Path(root), what, device)

    size = args.size or ("100m" if args.device == "cuda" else "7m")
    keep = args.workdir is not None
    root = Path(args.workdir or tempfile.mkdtemp(prefix="vs-trl-"))
    root.mkdir(parents=True, exist_ok=True)
    setup = build_assets(root, size, n_train=256)
    peak = matmul_peak_gflops(args.device)
    print(json.dumps({"setup": setup, "device": args.device, "size": size, "matmul_peak_gflops": round(peak, 1),
                      "torch_threads": __import__("torch").get_num_threads()}), flush=True)

    steps = {"embedded": EMBEDDED_STEPS, "short": 8, "epoch": setup["pairs"] // BATCH, "sweep": setup["pairs"] // BATCH}
    if "embedded" in args.shapes.split(","):
        print(json.dumps({"embedded_setup": build_embedded(root / "embedded")}), flush=True)
    rows = []
    for shape in args.shapes.split(","):
        harness_runs, trl_runs = [], []
        for repeat in range(args.repeats):
            out = root / shape / str(repeat)
            if shape == "embedded":
                harness_runs.append(harness_embedded(root / "embedded", out / "harness", args.device))
                trl_runs.append(trl_embedded(root / "embedded", out / "trl", args.device))
            elif shape == "sweep":
                harness_runs.append(harness_sweep(root, out / "harness", steps[shape], args.device))
                four = [trl_train(root, out / f"trl-{beta}", steps[shape], args.device, beta, evaluate=True)
                        for beta in BETAS]
                trl_runs.append({"wall_s": sum(r["wall_s"] for r in four), "train_s": sum(r["train_s"] for r in four),
                                 "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in four)})
            else:
                harness_runs.append(harness_train(root, out / "harness", steps[shape], args.device))
                trl_runs.append(trl_train(root, out / "trl", steps[shape], args.device))
            print(json.dumps({"shape": shape, "repeat": repeat, "harness": harness_runs[-1], "trl": trl_runs[-1]}),
                  flush=True)
        runs = len(BETAS) if shape == "sweep" else 1
        rows.append(summarise(shape, harness_runs, trl_runs, steps[shape] * BATCH * runs))
        print(json.dumps(rows[-1]), flush=True)

    memory = {what: timed([sys.executable, __file__, "--memory-child", str(root), what, args.device])["peak_growth_mb"]
              for what in ("reference", "step")}
    epoch = next((r for r in rows if r["shape"] == "epoch"), None)
    flops_per_step = 6 * setup["parameters"] * setup["mean_tokens"] * 2 * BATCH  # fwd + bwd, chosen + rejected
    print("\nshape     harness wall  TRL wall   ratio (range)        harness train  TRL train  ratio  pairs/s (h/TRL)")
    for row in rows:
        print(f"{row['shape']:<9} {row['harness_wall_s']:>9.1f} s {row['trl_wall_s']:>8.1f} s  {row['wall_ratio']:>5.2f}x "
              f"({row['wall_ratio_range'][0]:.2f}-{row['wall_ratio_range'][1]:.2f})  {row['harness_train_s']:>11.1f} s "
              f"{row['trl_train_s']:>8.1f} s  {row['train_ratio']:>4.2f}x  {row['harness_pairs_per_s']:.1f}/"
              f"{row['trl_pairs_per_s']:.1f}")
    print("peak RSS (whole process, MB): " + ", ".join(
        f"{r['shape']} harness {r['harness_peak_rss_mb']:.0f} / TRL {r['trl_peak_rss_mb']:.0f}" for r in rows))
    if epoch:
        step_s = epoch["harness_train_s"] / steps["epoch"]
        floor = flops_per_step / (peak * 1e9)
        print(f"harness step {step_s:.3f} s; matmul peak {peak:.0f} GFLOP/s puts a full-logits step (6 x params x "
              f"tokens) at {floor:.3f} s: {step_s / floor:.2f}x the floor")
    print(f"reference pass peak growth {memory['reference']:.0f} MB vs one training step {memory['step']:.0f} MB")
    pad = padding_report(root)
    print(f"padding share of forwarded tokens: training batches {pad['train_random']:.0%} at random, "
          f"{pad['train_grouped']:.0%} with train.group_by_length; reference pass {pad['reference_file_order']:.0%} "
          f"in file order, {pad['reference_same_length']:.0%} in same-length batches")
    if not keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
