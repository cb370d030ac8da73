"""The paper's §2: saliency flows (§2.1), label-word isolation (§2.2), deep-layer attention (§2.3).

Hook factories and run_* functions that measure a model; edge groups from roles, the
blocking hooks the isolation uses, and loyalty (shared with compression's Table 2).

May import: icl, models, results (errors always).
Never imported by: models, results, icl, testbeds.
"""
