"""The package metadata that every install reads."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info < (3, 11):
    pytest.skip("tomllib is in the standard library from Python 3.11", allow_module_level=True)
import tomllib

_PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pyproject() -> dict:
    return tomllib.loads(_PYPROJECT.read_text())


def test_license_is_an_spdx_expression_not_a_deprecated_table():
    # setuptools >= 77 warns on every install when project.license is a table.
    assert _pyproject()["project"]["license"] == "MIT"


def test_build_backend_is_new_enough_for_spdx_license_strings():
    requires = _pyproject()["build-system"]["requires"]
    pinned = [r for r in requires if re.match(r"setuptools\s*>=", r)]
    assert pinned, requires
    minimum = tuple(int(part) for part in pinned[0].split(">=")[1].split("."))
    assert minimum >= (77,)
