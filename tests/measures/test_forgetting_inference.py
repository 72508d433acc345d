"""Forgetting and inference cost, measured by the core for every built-in method."""
import math

import pandas as pd
import pytest
from conftest import MISBEHAVING, leitai

METHODS = "lora,full,prefix-tuning,p-tuning,prompt-tuning,lst"
SIDE = 16
MODEL = "tiny-zh"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("after") / "out"
    proc = leitai("run", "--methods", METHODS, "--model", MODEL, "--max-steps", "4", "--task-size", "16",
                  "--side-corpus-size", SIDE, "--infer-prompts", "2", "--no-baselines", "--workers", "2", "-q", "--out", out)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "results.csv").set_index("method")
    assert (df.status == "ok").all(), df.error.to_dict()
    return df, out


@pytest.fixture(scope="module")
def base_figure(registry):
    """The untouched base model's side-corpus loss, computed here, independently of any cell."""
    from suite.data.side_corpus import side_batches
    from suite.measures.forgetting import SIDE_BATCH, SIDE_MAX_TOKENS, cross_entropy
    from suite.models.loading import prepare_tokenizer

    model, tokenizer = registry.models[MODEL].load()
    tokenizer = prepare_tokenizer(tokenizer)
    texts = registry.side_corpora["zh-news-side"].texts(SIDE)
    return cross_entropy(model, side_batches(tokenizer, texts, SIDE_MAX_TOKENS, SIDE_BATCH))


def test_forgetting_before_is_the_base_models_figure_for_every_method(results, base_figure):
    df, _ = results
    assert set(df.index) == set(METHODS.split(","))
    for method, row in df.iterrows():
        assert math.isclose(row.forgetting_before, base_figure, rel_tol=1e-5), method
        assert math.isclose(row.forgetting, row.forgetting_after - row.forgetting_before, abs_tol=1e-9)
        if method == "full":  # trains the base itself: no view of the untouched base
            assert pd.isna(row.forgetting_view_before)
        else:  # the method switched off is the base, before and after training
            assert math.isclose(row.forgetting_view_before, base_figure, rel_tol=1e-5), method
            assert math.isclose(row.forgetting_view_after, base_figure, rel_tol=1e-5), method


def test_inference_is_timed_for_every_method_and_merged_where_it_can_be(results):
    df, out = results
    assert (df.infer_ms_per_token > 0).all() and (df.infer_ms_per_token_base > 0).all()
    assert (df.infer_prefill_tokens_per_second > 0).all()
    assert df.infer_overhead.round(9).equals((df.infer_ms_per_token / df.infer_ms_per_token_base).round(9))
    merged = df.infer_ms_per_token_merged.dropna()
    assert list(merged.index) == ["lora"] and merged.iloc[0] > 0
    assert df.loc["lora", "merge_max_logit_diff"] < 1e-3  # merged and unmerged LoRA agree
    summary = (out / "summary.md").read_text(encoding="utf-8")
    for heading in ("forgetting", "inference × base", "merged × base"):
        assert heading in summary


def test_side_corpus_shares_no_text_with_tasks_or_pretraining(registry):
    from plugins.models.tiny_zh.corpus import build_corpus
    from plugins.tasks.corpora import Matcher, side_sentences
    from suite.data.tasks import normalise

    side = [normalise(t) for t in side_sentences()]
    assert len(side) > 500
    matcher = Matcher(side)  # equal to a side sentence, or containing one of 8+ characters
    for name, task in registry.tasks.items():
        for split, examples in task.splits(None).items():
            for ex in examples:
                for text in (ex.instruction, ex.input, ex.output):
                    assert not matcher.hits(normalise(text)), (name, split, text)
    corpus = build_corpus()
    assert not any(matcher.hits(normalise(u)) for u in corpus.train + corpus.heldout)


def test_a_base_view_that_is_not_the_base_fails_the_cell(tmp_path):
    proc = leitai("run", "--methods", "peeker", "--model", MODEL, "--max-steps", "3", "--task-size", "16",
                  "--side-corpus-size", "8", "--infer-prompts", "0", "--no-baselines", "-q", "--out", tmp_path / "o",
                  env=MISBEHAVING)
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(tmp_path / "o" / "results.csv").iloc[0]
    assert row.status == "failed"
    assert "its base_view is not the base" in row.error
