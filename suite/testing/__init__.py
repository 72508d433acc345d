"""Testing a plugin: the conformance kit (:mod:`suite.testing.kit`) and the tiny random models
it runs on (:mod:`suite.testing.tiny_models`), for plugin authors' tests and leitai's own.

Import from here: ``from suite.testing import check_method, check_plugin_import, tiny_model``.
"""
from .kit import CHECKS, CheckResult, ConformanceError, ConformanceReport, check_method, check_plugin_import, fixed_batch, generation_prompts
from .tiny_models import ALL_ARCHITECTURES, ARCHITECTURES, BOS, EOS, PAD, VOCAB, tiny_config, tiny_model, tiny_quantized_model

__all__ = ["check_method", "check_plugin_import", "ConformanceReport", "CheckResult", "ConformanceError", "CHECKS",
           "fixed_batch", "generation_prompts", "tiny_model", "tiny_config", "tiny_quantized_model",
           "ARCHITECTURES", "ALL_ARCHITECTURES", "VOCAB", "PAD", "BOS", "EOS"]
