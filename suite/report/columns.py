"""The columns of ``results.csv`` (and ``results.parquet``): what each one means, for ``docs/records.md``."""
from __future__ import annotations

import re

from ..measures.diagnostics import DIVERGED_ABOVE, DIVERGED_MIN_STEPS

_ABOVE = f"{DIVERGED_ABOVE:.0%}"

#: the meaning of every column of ``results.csv`` (and ``results.parquet``) a core run writes
COLUMNS = {
    # the output contract (suite.report.RESULT_COLUMNS)
    "run_id": "the run's id, `<task>__<method>__s<seed>` (a tuning run's adds its setting: "
              "`<task>__<method>__tune-lr1e-03__s0`; a `--replay` run's its replay setting after the method: "
              "`<task>__<method>__replay-zh-news-side-0.3__s0`; a run on a quantized base its kind: "
              "`<task>__<method>__nf4__s0`); its files are in `runs/<run_id>/`",
    "method": "the method's name (`--methods`), with its `--replay` setting when it has one: `full + replay 0.3`, "
              "and on a quantized base ` @ ` and the kind: `lora @ nf4` (the name the tables and paired tests use; "
              "the method alone is `plain_method`)",
    "task": "the task's name (`--tasks`)",
    "seed": "the run's seed (every RNG; the batch order too)",
    "model": "the base model (`--model`)",
    "status": "`ok`, `failed` (the reason in `error`), `oom` (out of memory), `diverged` (a non-finite training "
              f"loss, a training loss that ended more than {_ABOVE} above its first step's (a run of "
              f"{DIVERGED_MIN_STEPS} steps or more), or a dev loss more than {_ABOVE} above the untrained base model's: "
              "`base_eval_loss`) or `timeout` (ended by the watchdog: past its "
              "`--cell-timeout`, or no progress for its `--stall-timeout`; `error` says which and the step it reached)",
    "error": "why the run did not finish `ok`: the exception's type and the first line of its message; for a "
             "`diverged` or `timeout` run, what the core found (which loss, how far; which limit, the step reached)",
    "trainable_params": "parameters with `requires_grad` after the method was applied, tied tensors once, counted by "
                        "the core; recorded for a cell the run-time guard fails too",
    "total_params": "the base model's parameters, counted by the core before the method is applied (a packed 4-bit "
                    "weight by the weights it holds, as its quantization state records its shape)",
    "trainable_pct": "100 × trainable_params / total_params: a percentage (0.29 means 0.29 %, not 29 %)",
    "adapter_bytes": "bytes on disk of what `Method.save` wrote (`runs/<run_id>/adapter/`)",
    "peak_memory_bytes": "peak memory of the training loop: `max_memory_allocated` on CUDA; on CPU the cell "
                         "process's peak RSS during training minus its RSS just before (`memory_kind` says which)",
    "memory_kind": "what `peak_memory_bytes` measured: `cuda_max_allocated` or `cpu_peak_rss_delta`",
    "train_seconds": "wall seconds of the training steps",
    "train_tokens": "non-padding tokens the training steps processed",
    "tokens_per_second": "train_tokens / train_seconds",
    "first_train_loss": "the training loss of the first step",
    "final_train_loss": "the mean training loss of the last 10% of the steps",
    "eval_loss": "the **dev loss**: the trained model's cross-entropy per answer token on the dev split "
                 "(token-weighted, from the logits); the reports call it \"dev loss\"",
    "score_name": "the task's metric (`Task.score_name`), e.g. `accuracy`",
    "score": "the task's score (`Task.score`) of the greedy answers on the test split; on the dev split for "
             "tuning runs, which leave it empty and fill `dev_score`",
    # the known extras (suite.report.frames.EXTRA_COLUMNS)
    "phase": "`final` (scored on test) or `tune` (a `--sweep` setting, scored on dev)",
    "dev_score": "the score on the dev split: a tuning run's (what its sweep chooses by), and with `--eval-every` "
                 "a final run's at the parameters it kept (`kept_step`)",
    "base_eval_loss": "the untrained base model's dev loss, measured in the run's own cell before the method is "
                      f"applied (as the baseline cell measures it): a run whose `eval_loss` is more than {_ABOVE} above it "
                      "is `diverged`",
    "choice_accuracy": "classification tasks (`Task.choices`): the share of test examples whose reference is the "
                       "choice the model gives the highest likelihood",
    "class_prior_loss": "classification tasks: the loss per answer token of a model that knows the answer format "
                        "and each label's training frequency but not the input (compare with `eval_loss`)",
    "probe_score": "classification tasks: the linear-probe baseline's score on the task's test split (a logistic "
                   "regression on the frozen base's last hidden state at the answer position, fitted on the train "
                   "split; `baselines.csv` row `linear probe`), beside the run's own `score`",
    "format_share": "the share of the run's greedy test answers that are non-empty and, for a task with a closed "
                    "answer set, one of its answers",
    "format_learned": "`format_share` ≥ 0.5: the run learned the answer format",
    "still_learning": "the training loss was still falling over the last 20% of the steps: `tail_slope` < 0 at "
                      "one-sided p < 0.05, and a fitted fall over that tail of at least 2% of its mean loss",
    "tail_slope": "least-squares slope of the training loss against the step over the last 20% of the steps",
    "tail_slope_p": "one-sided p-value (Student's t) that `tail_slope` is negative",
    "prepended_positions": "positions the method puts before the prompt (prefix keys, virtual tokens), counted "
                           "from the model's outputs; empty for a method that prepends nothing",
    "prepended_attention_share": "the share of the last prompt position's attention that lands on the prepended "
                                 "positions (mean over layers, heads and 8 test prompts; `suite/measures/attention.py`): "
                                 "near 0 where the base looks past them",
    "prepended_uniform_share": "the share a uniform attention would give the prepended positions, to compare with "
                               "`prepended_attention_share`",
    "peak_memory_reserved_bytes": "on CUDA, the allocator's peak reserved bytes (empty on CPU)",
    "predicted_peak_bytes": "`leitai plan`'s prediction of `peak_memory_bytes` from the model's config alone, at the "
                            "cell's first batch, on the same basis (CPU: without the weights); empty where it could "
                            "not be made, in tuning runs, on a quantized base and with replay (docs/plan.md)",
    "weights_bytes": "bytes of the model's parameters (unique storages); on a quantized base the packed weights "
                     "and their quantization state (block and row scales)",
    "grads_bytes": "bytes of the gradients of one step",
    "optimizer_bytes": "bytes of the optimiser's state",
    "activation_bytes": "bytes autograd holds for backward at the end of one step's forward (unique storages, parameters excluded)",
    "steps": "optimiser steps taken (each of `--batch-size` x `--grad-accum` examples)",
    "prompt_format": "how single-turn examples were put to the model: `plain` (the instruction prompt) or `chat` (the "
                     "model's chat template; `--prompt-format`)",
    "attn_implementation": "the attention kernel that ran (`--attn-implementation`; `auto` leaves transformers' "
                           "choice, e.g. `sdpa`)",
    "epochs": "passes over the train split the steps made (`--epochs` sets the steps; else `--max-steps` gives them)",
    "best_dev_step": "`--eval-every` runs: the step of the best dev evaluation (the highest dev score, then the lowest "
                     "dev loss); its score is `best_dev_score`",
    "best_dev_score": "`--eval-every` runs: the dev score at `best_dev_step`",
    "kept_step": "`--eval-every` runs: the step whose parameters the test split scored (`--keep best`: "
                 "`best_dev_step`; `--keep last`: the last step)",
    "resumed_from_step": "the step of the checkpoint a resumed run went on from (`--checkpoint-every`, `--resume`); "
                         "its seconds, tokens and losses are those of all its pieces together, its memory the last "
                         "piece's",
    "checkpoint_seconds": "seconds spent writing checkpoints inside the cell (`--checkpoint-every`), kept out of "
                          "`train_seconds`",
    "lr": "the learning rate the run used (`params[\"lr\"]`)",
    "truncated_examples": "training examples cut to `--max-len`",
    "forgetting_before": "the untouched base model's cross-entropy per token (nats) on the side corpus",
    "forgetting_after": "the trained model's cross-entropy on the same tokens",
    "forgetting": "forgetting_after − forgetting_before (higher: more of the base's language lost)",
    "infer_ms_per_token": "greedy decoding latency per new token of the trained model (ms)",
    "infer_ms_per_token_base": "the same for a freshly loaded base model, timed in the same process",
    "infer_ms_per_token_merged": "the same for the merged model (`mergeable` methods only)",
    "infer_overhead": "infer_ms_per_token / infer_ms_per_token_base",
    "infer_overhead_merged": "infer_ms_per_token_merged / infer_ms_per_token_base",
    "device": "`cpu` or `cuda`",
    "device_name": "the CPU's or GPU's name",
    "dtype": "the base weights' dtype and any autocast, e.g. `float32`, `bfloat16 + bf16 autocast` (`--dtype`)",
    "optimizer": "the optimiser (`--optimizer`): `adamw` (torch's) or bitsandbytes' `adamw8bit` / `paged-adamw8bit`; "
                 "a variant of the method when the shootout runs several (`full + adamw8bit`)",
    "quantize": "the base's quantization (`--quantize`): `none`, `nf4`, `fp4` or `int8`",
    "weights_dtype": "the dtype of the base model's parameters as loaded, measured (`+`-joined when several; "
                     "quantized layers by their kind, read from the layers: `float32+nf4`)",
    "trainable_dtype": "the dtype of what trains, measured after the core's cast (`--trainable-dtype`: float32, or "
                       "bfloat16 for \"pure bf16\"; a variant of the method when the shootout runs both)",
    "method_info": "what ran, as the method reported it (`Method.run_info`), as JSON text",
    "plain_method": "the method's own name, without a `--replay` or `--quantize` label",
    "replay": "the run's `--replay` setting: `none`, or `SOURCE:FRACTION` (docs/replay.md)",
    # --retention (suite/measures/retention.py), after the known extras (sorted by name with the rest)
    "retention_accuracy": "`--retention` runs: the share of the harness tasks' questions (all of them pooled) the "
                          "trained model answers right, scored by lm-evaluation-harness on the model in memory",
    "retention_base_accuracy": "`--retention` runs: the same for the untouched base model (its baseline cell), on "
                               "the questions both answered",
    "retention_change": "retention_accuracy − retention_base_accuracy on the same questions (negative: answers the "
                        "base gave right and the run lost)",
    "retention_tasks": "`--retention` runs: each harness task's accuracy before (the base) and after (the run), "
                       "as JSON text: `{\"TASK\": {\"before\": 0.57, \"after\": 0.53}}`",
    "retention_seconds": "`--retention` runs: seconds the harness took to score the trained model",
    # further measurements, passed through by name
    "answer_head": "whether the output head ran only at the answer positions (else on full logits)",
    "data_seconds": "seconds to load and tokenise the task (or read it from the cache)",
    "data_cached": "whether the tokenised task came from the cache",
    "train_examples": "training examples the run used",
    "dev_examples": "dev examples the run used",
    "test_examples": "test examples the run used (test answers of a conversation task: one per assistant turn)",
    "max_new_tokens": "the generation limit of the run's answers",
    "truncated_eval_examples": "dev and test examples cut to `--max-len`",
    "forgetting_view_before": "the side-corpus loss of the model with the method switched off (`Method.base_view`), "
                              "before training",
    "forgetting_view_after": "the same, after training",
    "infer_prefill_tokens_per_second": "prompt tokens per second of the trained model",
    "infer_prefill_tokens_per_second_base": "the same for the base model",
    "infer_prefill_tokens_per_second_merged": "the same for the merged model",
    "merge_max_logit_diff": "the largest difference between merged and unmerged logits on the timed prompts",
    "final_replay_loss": "`--replay` runs: the mean replay loss (LM loss per replay token) of the last 10% of "
                         "the steps; the curve's `replay` split has every step's",
    "replay_texts": "`--replay` runs: the distinct replay texts the steps drew from",
    "task_examples_per_step": "`--replay` runs: task examples in each batch (the batch size less the replay sequences)",
    "replay_sequences_per_step": "`--replay` runs: replay sequences in each batch",
    "infer_merged_not_applicable": "on a quantized base, why there are no merged figures: peft cannot merge into "
                                   "the layer, or merging re-quantizes the weights and changes the logits",
    "peak_memory_per_device": "a distributed cell's peak memory on each device (JSON list)",
    "processes": "a distributed cell's process count",
    "shard": "a distributed cell's sharding: `none` (data parallel) or `fsdp` (`--shard`)",
    "memory_per_process": "a distributed cell's bytes per process (JSON): `weights_bytes`, `grads_bytes`, "
                          "`optimizer_bytes` (what each holds of a sharded model) and `activation_bytes`; the columns "
                          "hold the largest process's",
}


#: further columns named by pattern: what the run's task adds
COLUMN_PATTERNS = {
    r"score_turn\d+": "`score_turn1`, `score_turn2`, …: conversation tasks: the score of each assistant turn",
}


def undocumented_columns(columns) -> list[str]:
    """The columns of ``columns`` (of a real ``results.csv``) that :data:`COLUMNS` and
    :data:`COLUMN_PATTERNS` do not describe: a task's own metrics (``Task.metrics``) are not
    the core's to describe, so pass ``columns`` without them."""
    return [c for c in columns if c not in COLUMNS and not any(re.fullmatch(p, c) for p in COLUMN_PATTERNS)]
