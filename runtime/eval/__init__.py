"""Quantization quality: how far a model file's next-token distributions are from a reference's.

    report = evaluate(["m-q5_1.gguf"], "m-f16.gguf", text)           # or token ids instead of text
    report = evaluate_formats("m.pth", ["q4_0", "q5_1"], text)       # temporary quantized copies
    evaluation_for("m-q5_1.gguf")                                    # the last saved figures, or None

Modules: `metrics` (per-position figures in float64), `run` (reference preparation, the decode
loop, cancellation), `store` (results saved in the data folder for the app's model screen).
"""

from runtime.eval.metrics import Scores, log_softmax
from runtime.eval.result import EvalError, EvalReport, EvalResult
from runtime.eval.run import DEFAULT_MAX_TOKENS, evaluate, evaluate_formats, tokenize_for
from runtime.eval.store import evaluation_for, load_evaluations, save_evaluation, store_path

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "EvalError",
    "EvalReport",
    "EvalResult",
    "Scores",
    "evaluate",
    "evaluate_formats",
    "evaluation_for",
    "load_evaluations",
    "log_softmax",
    "save_evaluation",
    "store_path",
    "tokenize_for",
]
