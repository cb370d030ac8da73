"""The model layer: the only package that names TransformerLens classes and hook points.

Adapts a HookedTransformer or TransformerBridge to one interface (hook names, logits, key/value
caches), guards experiments (frozen parameters, live attention hooks), checkpoints blocks for
gradient passes at long contexts (recompute) and loads models by name, folder or object;
built-in models register themselves here from anchor_flow.testbeds.

May import: nothing of anchor_flow (errors always).
Never imported by: results, report.
"""
