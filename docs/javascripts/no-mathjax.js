// The notebooks use no LaTeX: this stands in for MathJax, which mkdocs-jupyter would
// otherwise load from a CDN (or from an empty URL), so the site works offline.
