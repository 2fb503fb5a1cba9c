"""Caption recipes: stages over one record (templates with each item's metadata and earlier outputs), prompt
sets (many captions per image) and vocabulary constraints. See docs/recipes.md."""

from __future__ import annotations

from capmill.recipes.spec import Constraints, Option, PromptSet, Recipe, Stage

__all__ = ["Constraints", "Option", "PromptSet", "Recipe", "Stage"]
