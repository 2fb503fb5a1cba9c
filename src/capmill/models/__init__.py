"""Model profiles (what each captioner is) and families (how each architecture is driven)."""

from __future__ import annotations

from capmill.models.catalog import PROFILES, all_profiles, get_profile
from capmill.models.profile import MODES, Profile

__all__ = ["MODES", "PROFILES", "Profile", "all_profiles", "get_profile"]
