"""The paper's §3: anchor re-weighting (§3.1), context compression (§3.2), error diagnosis (§3.3).

One subpackage per application; each builds on §2's hooks (blocking, loyalty) and never on
another application.

May import: analysis, icl, models, results (errors always).
Never imported by: models, results, icl, testbeds, analysis.
"""
