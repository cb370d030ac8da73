"""The repository's front matter agrees with itself: the README's test command is the one
.ci/run runs, the license and citation match pyproject.toml, and every page the site's nav
or the README links to exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
_PROJECT = (ROOT / "pyproject.toml").read_text()  # tomllib is Python 3.11+; 3.10 is supported
VERSION = re.search(r'^version = "([^"]+)"$', _PROJECT, re.M).group(1)
LICENSE_LINE = re.search(r"^license = (.*)$", _PROJECT, re.M).group(1)


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    block = re.search(
        r"# --- begin README test command ---\n(.*?)\n# --- end README test command ---", ci, re.S
    )
    assert block is not None, ".ci/run lost its README test command markers"
    command = block.group(1).strip()
    assert "\n" not in command
    assert f"```bash\n{command}\n```" in README, f"README.md does not show: {command}"


def test_readme_fits_on_a_screen_or_two_and_its_links_exist() -> None:
    assert README.count("\n") <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links to a missing {target}"


def test_license_and_citation_match_pyproject() -> None:
    assert LICENSE_LINE == '{ text = "MIT" }'
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["license"] == "MIT"
    assert str(citation["version"]) == VERSION
    paper = citation["preferred-citation"]
    assert paper["doi"] == "10.18653/v1/2023.emnlp-main.609"
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Wang", "Li"]
    assert VERSION in (ROOT / "CHANGELOG.md").read_text()


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_every_page_in_the_site_nav_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_files(config["nav"])
    assert len(pages) >= 30
    for page in pages:
        if page.startswith("notebooks/"):  # executed copies of notebooks/ (scripts/docs.sh)
            assert (ROOT / page).exists(), f"nav lists {page}, not in notebooks/"
        else:
            assert (ROOT / "docs" / page).exists(), f"nav lists docs/{page}, which is missing"
    notebooks = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {Path(p).name for p in pages if p.startswith("notebooks/")} == notebooks
