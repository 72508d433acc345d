"""Inference cost of a trained model: greedy decoding latency per new token and prompt
processing (prefill) throughput, one prompt at a time (the latency a user of the adapter sees).

Each prompt is generated twice: one new token (prefill plus one step) and ``new_tokens`` new
tokens; the difference, over the tokens produced after the first, is the per-token decoding
latency. Several models are timed in turn, ``repeats`` times, keeping each one's fastest
repeat, so drift of the machine hits them all alike. On the CPU the timing runs on one
thread: a decoding step of a small model is a long chain of small ops, and with two threads
each op waits for the second one, which on a machine with any other load turns milliseconds
into seconds and the figure into noise.

:func:`inference_costs` is what a cell records: the trained model, a freshly loaded base model
and, for methods that can merge, the merged model (after checking that merged and unmerged
outputs agree). On a quantized base (``--quantize``) merging folds the adapter into 4- or 8-bit
weights and quantizes them again, which changes the model: the merged figures are kept only
where peft can merge and the outputs still agree; otherwise they are recorded as not
applicable, with the reason in ``infer_merged_not_applicable``.
"""
from __future__ import annotations

import time

import torch

from ..progress import beat


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _generate(model, ids: torch.Tensor, new_tokens: int, pad_id: int) -> tuple[float, int]:
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              num_beams=1, pad_token_id=pad_id)
    _sync(ids.device)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    _sync(ids.device)
    return time.perf_counter() - start, out.shape[1] - ids.shape[1]


def time_one(model, prompts: list[list[int]], new_tokens: int, pad_id: int, autocast) -> dict:
    """One timing pass of ``model`` over ``prompts``: ms per decoded token and prefill tokens/s."""
    device = next(model.parameters()).device
    model.eval()
    prefill_s = decode_s = 0.0
    decoded = prompt_tokens = 0
    with autocast():
        for prompt in prompts:
            beat("timing inference")
            ids = torch.tensor([prompt], device=device)
            t1, _ = _generate(model, ids, 1, pad_id)
            tn, n = _generate(model, ids, new_tokens, pad_id)
            prefill_s += t1
            prompt_tokens += len(prompt)
            if n > 1:
                decode_s += max(tn - t1, 0.0)
                decoded += n - 1
    return {"ms_per_token": 1000 * decode_s / decoded if decoded else None,
            "prefill_tokens_per_second": prompt_tokens / prefill_s if prefill_s else None}


def time_models(models: dict, prompts: list[list[int]], new_tokens: int, pad_id: int, autocast,
                repeats: int = 3) -> dict[str, dict]:
    """:func:`time_one` for each named model, interleaved, best of ``repeats`` per figure."""
    threads = torch.get_num_threads()
    if next(next(iter(models.values())).parameters()).device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _best_of(models, prompts, new_tokens, pad_id, autocast, repeats)
    finally:
        torch.set_num_threads(threads)


def keep_best(best: dict, got: dict) -> None:
    """Update ``best`` in place with the better of each figure in ``got`` (lower latency,
    higher prefill throughput)."""
    if got["ms_per_token"] is not None and (best["ms_per_token"] is None or got["ms_per_token"] < best["ms_per_token"]):
        best["ms_per_token"] = got["ms_per_token"]
    if got["prefill_tokens_per_second"] and got["prefill_tokens_per_second"] > (best["prefill_tokens_per_second"] or 0):
        best["prefill_tokens_per_second"] = got["prefill_tokens_per_second"]


def _best_of(models: dict, prompts, new_tokens, pad_id, autocast, repeats) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for name, model in models.items():
            got = time_one(model, prompts, new_tokens, pad_id, autocast)
            keep_best(best.setdefault(name, dict(got)), got)
    return best


@torch.inference_mode()
def logits_on(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    """The model's logits (float32, on the CPU) at each prompt's own positions."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=device)
        out.append(model(input_ids=ids).logits[0, -len(prompt) :].float().cpu())
    return out


def merge_check(before: list[torch.Tensor], after: list[torch.Tensor], rtol: float) -> tuple[float, bool]:
    """Largest absolute logit difference between ``before`` and ``after``, and whether it is
    within ``rtol`` of the largest logit (plus a small absolute floor)."""
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    scale = max(float(a.abs().max()) for a in before)
    return diff, diff <= 1e-4 + rtol * scale


def inference_costs(method, model, load_base, prompts: list[list[int]], new_tokens: int, pad_id: int,
                    autocast, rtol: float, quantized: bool = False) -> dict:
    """Per-token decoding latency and prefill throughput of the trained model, of a freshly
    loaded base model (``load_base()``), and of the merged model where the method merges.
    Call last: merging may change ``model`` in place. ``quantized``: the base is quantized (see
    the module's docstring for what merging means there)."""
    from ..errors import GuardError

    if not prompts or new_tokens < 2:
        return {}
    base = load_base()
    timed = time_models({"base": base, "method": model}, prompts, new_tokens, pad_id, autocast)
    out = {}
    if method.mergeable:
        with autocast():
            unmerged = logits_on(model, prompts)
            merged_model, why_not = _merged(method, model, quantized)
            merged = logits_on(merged_model, prompts) if merged_model is not None else None
        diff, ok = merge_check(unmerged, merged, rtol) if merged is not None else (None, True)
        out["merge_max_logit_diff"] = diff
        if not ok and quantized:  # the quantization of the merged weights, not a fault of the method
            merged_model, why_not = None, (f"merging re-quantizes the base's weights: merged and unmerged logits "
                                           f"differ by up to {diff:.3g}")
        elif not ok:
            raise GuardError(f"method {method.name!r}: merged and unmerged logits differ by up to {diff:.3g}")
        if merged_model is None:
            out["infer_merged_not_applicable"] = why_not
        else:
            again = time_models({"base": base, "merged": merged_model}, prompts, new_tokens, pad_id, autocast)
            keep_best(timed["base"], again["base"])  # the base's best over both rounds
            timed["merged"] = again["merged"]
    suffix = {"method": "", "base": "_base", "merged": "_merged"}
    for name, figures in timed.items():
        out[f"infer_ms_per_token{suffix[name]}"] = figures["ms_per_token"]
        out[f"infer_prefill_tokens_per_second{suffix[name]}"] = figures["prefill_tokens_per_second"]
    base_ms = out["infer_ms_per_token_base"]
    for name in ("", "_merged"):
        ms = out.get(f"infer_ms_per_token{name}")
        out[f"infer_overhead{name}"] = ms / base_ms if ms is not None and base_ms else None
    out.setdefault("infer_ms_per_token_merged", None)
    out.setdefault("infer_overhead_merged", None)
    return out


def _merged(method, model, quantized: bool):
    """``(merged model, None)``, or on a quantized base where peft cannot merge ``(None, why)``."""
    if not quantized:  # a float base: a method that declares it merges must merge
        return method.merge(model), None
    try:
        return method.merge(model), None
    except Exception as e:  # peft has no merge into this quantized layer
        return None, f"cannot merge into a quantized layer ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})"
