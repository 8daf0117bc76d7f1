"""The front door: the README stays short, every relative link in it and in the guides points at a file that
exists, and the guides build as a site in strict mode (so an API reference to a moved name fails the suite)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_read_in_five_minutes():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file_that_exists(page):
    text = page.read_text(encoding="utf-8")
    missing = [target for target in LINK.findall(text) if not re.match(r"[a-z]+:|#", target)
               and not (page.parent / target.split("#")[0]).exists()]
    assert not missing, f"{page.name} links to missing files: {missing}"


def test_every_guide_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert [p.name for p in PAGES[1:] if p.name not in nav] == []


def test_the_guides_build_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed: pip install 'steerlab[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "run_with_cache" in api and "paired_summary" in api  # the reference is generated from the docstrings
