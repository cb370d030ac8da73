"""In-context learning inputs and their plain evaluation: roles, prompts, tasks, data, sampling.

Everything a prompt is made of (paper §0, Table 4) and vanilla ICL accuracy, which every
experiment starts from. Knows nothing of saliency or the applications.

May import: models, results (errors always).
Never imported by: models, results.
"""
