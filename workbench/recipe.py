"""Recipes: how a variant was made, exactly enough to rebuild it (YAML or JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.errors import ParameterError, WorkbenchError

RECIPE_FORMAT = 1
KINDS = ("prune", "quantize")


class RecipeError(WorkbenchError, ValueError):
    """A recipe file is malformed or names something unknown."""


@dataclass(frozen=True)
class Recipe:
    """One compression step: ``kind`` ("prune"/"quantize"), ``method``, its ``params``, the
    ``seed`` and the ``parent`` variant it starts from (``None`` = the base model)."""

    name: str
    kind: str
    method: str
    params: dict = field(default_factory=dict)
    seed: int = 0
    parent: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(d, dict):
            raise RecipeError(f"{where}: each variant must be a mapping, got {type(d).__name__}")
        missing = {"name", "kind", "method"} - set(d)
        if missing:
            raise RecipeError(f"{where}: missing field(s) {sorted(missing)}")
        extra = set(d) - {"name", "kind", "method", "params", "seed", "parent"}
        if extra:
            raise RecipeError(f"{where}: unknown field(s) {sorted(extra)}")
        if d["kind"] not in KINDS:
            raise RecipeError(f"{where}: kind must be one of {KINDS}, got {d['kind']!r}")
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise RecipeError(f"{where}: params must be a mapping")
        try:
            seed = int(d.get("seed", 0))
        except (TypeError, ValueError):
            raise RecipeError(f"{where}: seed must be an integer") from None
        return cls(str(d["name"]), d["kind"], str(d["method"]), dict(params), seed, d.get("parent"))


def dump_recipes(recipes: list[Recipe], session_info: dict, path: str | Path | None = None,
                 fmt: str | None = None) -> str:
    """Serialise recipes (plus the session's model/data description) to YAML or JSON text;
    write it atomically to ``path`` if given (format from the suffix unless ``fmt``)."""
    doc = {"workbench_recipe": RECIPE_FORMAT, "session": session_info,
           "variants": [r.to_dict() for r in recipes]}
    fmt = fmt or ("json" if path is not None and str(path).endswith(".json") else "yaml")
    if fmt == "json":
        text = json.dumps(doc, indent=2)
    elif fmt == "yaml":
        import yaml

        text = yaml.safe_dump(doc, sort_keys=False)
    else:
        raise ParameterError(f"recipe format must be 'yaml' or 'json', got {fmt!r}")
    if path is not None:
        from workbench.cache import atomic_write_bytes

        atomic_write_bytes(Path(path), text.encode())
    return text


def load_recipes(source: str | Path) -> tuple[dict, list[Recipe]]:
    """Read ``(session_info, recipes)`` from a recipe file path or YAML/JSON text."""
    import yaml

    where = "recipe"
    text = str(source)
    if isinstance(source, Path) or (len(text) < 4096 and "\n" not in text and Path(text).exists()):
        where = str(source)
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise RecipeError(f"{where}: cannot read the recipe file ({err})") from None
    try:
        doc = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as err:
        raise RecipeError(f"{where}: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(doc, dict) or "variants" not in doc:
        raise RecipeError(f"{where}: expected a mapping with a 'variants' list")
    version = doc.get("workbench_recipe")
    if version != RECIPE_FORMAT:
        raise RecipeError(f"{where}: recipe format {version!r} is not supported (expected {RECIPE_FORMAT})")
    if not isinstance(doc["variants"], list):
        raise RecipeError(f"{where}: 'variants' must be a list")
    recipes = [Recipe.from_dict(v, f"{where}, variant {i}") for i, v in enumerate(doc["variants"])]
    return dict(doc.get("session") or {}), recipes
