"""Errors of steering: each names the bad value and what would be valid."""

from __future__ import annotations

from experts.errors import SteerlabError


class VectorMismatchError(SteerlabError):
    """A vector (or probe, or reward) made for another expert: width or weights fingerprint differ."""


class BadVectorFileError(SteerlabError):
    """A file that is not a steerlab vector, or is corrupt."""


class BadDataError(SteerlabError):
    """A dataset file with a bad line: names the file, the line and what was expected."""
