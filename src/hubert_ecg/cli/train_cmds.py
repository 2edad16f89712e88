"""Subcommands (filled in as the pipeline grows)."""

from __future__ import annotations
