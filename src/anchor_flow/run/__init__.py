"""The main job: RunConfig, one step per experiment, and run_experiments writing a results folder.

config holds RunConfig and the experiment names; steps runs each experiment's public run_*
function per seed and writes its files; pipeline owns the folder (resume, refuse, restart).

May import: analysis, applications, icl, models, report, results (errors always).
Never imported by: models, results, icl, testbeds, analysis, applications, report.
"""
