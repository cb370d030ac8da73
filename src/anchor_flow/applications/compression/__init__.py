"""§3.2 anchor-only context compression: kept positions, pruned caches, engines, Table 2 and 3.

positions (pure) <- cache <- engines <- outcomes (per prompt) <- baselines (Table 2);
speedup_result (pure) <- speed (Table 3).

Part of its parent package; the parent's import rules apply.
"""
