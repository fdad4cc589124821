"""The docs site (docs/mkdocs.yml, pages in docs/pages/) builds with `mkdocs build --strict`:
no broken link, no page left out of the nav; and a broken link does fail the build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = (
    "index.md",
    "config-guide.md",
    "configuration.md",
    "oauth2.md",
    "sieve.md",
    "templates.md",
    "promises.md",
    "guarantees.md",
    "deploy.md",
    "upgrade.md",
    "metrics.md",
    "console.md",
    "scaling.md",
    "runbook.md",
    "design-notes.md",
    "development.md",
)


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_site_builds_strictly_with_every_page(tmp_path):
    built = build(DOCS / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    nav = [next(iter(entry.values())) for entry in yaml.safe_load((DOCS / "mkdocs.yml").read_text())["nav"]]
    assert sorted(nav) == sorted(PAGES)
    for page in PAGES:
        html = tmp_path / "site" / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.is_file(), page
    guarantees = (tmp_path / "site" / "guarantees" / "index.html").read_text()
    assert "What postroom guarantees" in guarantees  # docs/guarantees.md itself, through the link


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy, symlinks=False, ignore=shutil.ignore_patterns("build", "screenshots"))
    runbook = copy / "pages" / "runbook.md"
    runbook.write_text(runbook.read_text() + "\nSee [the missing page](missing.md).\n")
    built = build(copy / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "missing.md" in built.stderr
