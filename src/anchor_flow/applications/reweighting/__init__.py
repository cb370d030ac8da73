"""§3.1 anchor re-weighting: the learnable beta (beta.py) and the Table 1 protocol (protocol.py).

Part of its parent package; the parent's import rules apply.
"""
