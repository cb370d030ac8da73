"""Results on disk and the statistics every experiment shares; no model, no TransformerLens.

One .npz + meta .json per result object, the pooled-run index, means and bootstrap intervals,
ROC-AUC, and the reader of a results folder's results.json (its schema and load_run).

May import: nothing of anchor_flow (errors always).
Never imported by: models, testbeds.
"""
