"""The application layer: what turns a config into a finished run.

`context` builds a RunContext once per run (config, method, task, tokenizer, formatter, SFT fingerprint,
scorers); `pipeline` trains, evaluates and records with it; `reporting` writes the report and its W&B
summary run. `sweeps` runs trials of this pipeline and the CLI (`cli/`) drives both, from above; this
layer imports neither, and nothing below it imports it.
"""
