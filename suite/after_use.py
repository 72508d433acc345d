"""What a method costs after training, measured by the core for every method: forgetting of
the base model's language (:mod:`suite.forgetting`) and inference latency, as trained and,
for methods that can merge, merged (:mod:`suite.inference`).

Nothing is taken from the plugin: "before" is the untouched base model's figure, measured
before the method is applied; a method's :meth:`~suite.Method.base_view` (the base with the
method switched off) must reproduce it before and after training, or the cell fails; merged
and unmerged outputs must agree before the merged model is timed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .forgetting import cross_entropy
from .guards import GuardError
from .inference import keep_best, logits_on, merge_check, time_models

#: side-corpus texts are cut to this many tokens and scored this many at a time
SIDE_MAX_TOKENS = 128
SIDE_BATCH = 8


@dataclass
class AfterUse:
    method: object
    side: list | None  # side-corpus batches, or None when forgetting is not measured
    rtol: float  # how close the base view's figure must be to the base model's
    before: float | None = None

    def measure_base(self, base) -> None:
        """The untouched base model's side-corpus loss (call before the method is applied)."""
        if self.side:
            self.before = cross_entropy(base, self.side)

    def view_loss(self, model, when: str) -> float | None:
        """The side-corpus loss of the method's base view; raises GuardError if it is not the base's."""
        view = self.method.base_view(model) if self.side else None
        if view is None:
            return None
        with view as base:
            loss = cross_entropy(base, self.side)
        if abs(loss - self.before) > 1e-6 + self.rtol * abs(self.before):
            raise GuardError(
                f"method {self.method.name!r}: with the method switched off ({when}) the side-corpus loss is "
                f"{loss:.6f}, the untouched base model's is {self.before:.6f}; its base_view is not the base"
            )
        return loss

    def forgetting(self, model) -> dict:
        if not self.side:
            return {}
        after = cross_entropy(model, self.side)
        return {"forgetting_before": self.before, "forgetting_after": after,
                "forgetting": after - self.before, "forgetting_view_after": self.view_loss(model, "after training")}


def inference_costs(method, model, load_base, prompts: list[list[int]], new_tokens: int, pad_id: int,
                    autocast, rtol: float) -> dict:
    """Per-token decoding latency and prefill throughput of the trained model, of a freshly
    loaded base model (``load_base()``), and of the merged model where the method merges.
    Call last: merging may change ``model`` in place."""
    if not prompts or new_tokens < 2:
        return {}
    base = load_base()
    timed = time_models({"base": base, "method": model}, prompts, new_tokens, pad_id, autocast)
    out = {}
    if method.mergeable:
        with autocast():
            unmerged = logits_on(model, prompts)
            merged_model = method.merge(model)
            merged = logits_on(merged_model, prompts)
        diff, ok = merge_check(unmerged, merged, rtol)
        out["merge_max_logit_diff"] = diff
        if not ok:
            raise GuardError(f"method {method.name!r}: merged and unmerged logits differ by up to {diff:.3g}")
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
