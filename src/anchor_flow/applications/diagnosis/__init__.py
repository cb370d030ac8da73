"""§3.3 anchor-distance error diagnosis: recording the vectors (distances.py), the result
(result.py), the maths (confusion.py).

Part of its parent package; the parent's import rules apply.
"""
