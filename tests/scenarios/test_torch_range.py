"""The torch range the build extra declares: it admits every release the suite is tested on.

pip keeps a torch that the range admits and replaces one it does not, so a range narrower than the
tested releases would make ``pip install "rnnexport[build,cpu]"`` swap out the user's torch.
"""

from __future__ import annotations

import re
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ..helpers import REPO


def _declared() -> str:
    """The specifier of the torch requirement in pyproject.toml (``>=2.13,<2.16``)."""
    found = re.findall(r'^\s*"torch([<>=!~][^"]*)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert len(found) == 1, found
    return str(found[0])


def _matrix_releases() -> list[str]:
    """The releases scripts/test_torch_matrix.sh tests by default."""
    script = (REPO / "scripts" / "test_torch_matrix.sh").read_text()
    found = re.search(r"releases=\(([0-9. ]+)\)", script)
    assert found, "scripts/test_torch_matrix.sh has no default release list"
    return found.group(1).split()


def test_the_range_admits_the_torch_under_test() -> None:
    installed = metadata.version("torch")  # a local label such as +cpu is admitted like its release
    assert Version(installed) in SpecifierSet(_declared()), f"torch {installed} is outside {_declared()}"


def test_the_range_admits_every_tested_release_and_no_older_one() -> None:
    declared = SpecifierSet(_declared())
    releases = _matrix_releases()
    assert {"2.13.0", "2.14.1", "2.15.0"} <= set(releases)
    for release in releases:
        assert Version(release) in declared, f"{release} is tested but outside {declared}"
    oldest = min(Version(r) for r in releases)
    assert Version(f"{oldest.major}.{oldest.minor - 1}.0") not in declared  # never run on


def test_the_readme_states_the_declared_range() -> None:
    assert f"(`{_declared()}`)" in (REPO / "README.md").read_text()
