"""Offline evaluation of models and route arms (`modelyard eval`).

dataset (the JSONL prompt set) -> runner (generations through the router, grouped by the
model version and arm that answered) -> scoring (pluggable metrics) -> statistics
(confidence intervals) -> report (tables, JSON, the EvaluationRun the registry stores).
"""
