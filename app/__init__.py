"""The application layer: what turns a config into a finished run.

`context` builds a RunContext once per run (config, method, task, tokenizer, formatter, SFT fingerprint,
scorers); `pipeline` trains, evaluates and records with it; `cli` is the `harness` command. This layer
and `sweeps` orchestrate the core (`harness`), `methods` and `evals`; nothing below imports it.
"""
