"""§3.3 anchor-distance error diagnosis: the recorded vectors (distances.py), the maths
(confusion.py).

Part of its parent package; the parent's import rules apply.
"""
