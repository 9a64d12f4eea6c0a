"""Python helpers referenced from generated lm-evaluation-harness task YAMLs (``!function
tokenclean.evaluation.tasks.<module>.<function>``). Importable without lm-eval installed."""
