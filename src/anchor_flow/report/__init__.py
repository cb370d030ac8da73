"""Figures and the self-contained report.html: reads result objects and folders, never runs a model.

figures/ turns result objects into plotly figures; html writes a page of sections; sections
holds each experiment's standard sections; folder renders a whole results folder;
compare/ sets several results folders side by side (anchor-flow compare).

May import: analysis, applications, icl, results (errors always).
Never imported by: models, results, icl, testbeds, analysis, applications.
"""
