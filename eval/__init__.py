"""Evaluation of a served gpt-oss: lm-eval accuracy runs (eval.accuracy), the serving benchmark
(eval.serving), and the model card's published numbers (eval.published). See eval/README.md."""
