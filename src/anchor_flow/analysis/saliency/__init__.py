"""§2.1 saliency of attention edges: the hook factory (hooks.py), running it over prompts
(measure.py) and its result object (result.py).

Part of its parent package; the parent's import rules apply.
"""
