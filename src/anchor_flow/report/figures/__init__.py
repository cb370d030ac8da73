"""Plotly figures of result objects, one module per part of the paper; never run a model or .show().

Part of its parent package; the parent's import rules apply.
"""
