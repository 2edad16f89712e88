"""``config``: print the configuration templates and published recipes that ship inside the package.

A user who installed the wheel has no ``configs/`` folder; ``hubert-ecg config pretrain-loop > loop.yaml``
gives the same commented template, and ``hubert-ecg config ptbxl-superdiag`` a published recipe to edit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_command, register

_PACKAGE = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = _PACKAGE / "templates"
RECIPES_DIR = _PACKAGE / "recipes"

TEMPLATE_HELP = {
    "pretrain-loop": "the whole pre-training loop (features -> k-means -> labels -> train, iterated)",
    "finetune": "every fine-tuning recipe key at the package defaults (for finetune --recipe FILE)",
}


def template_names() -> list[str]:
    """Templates shipped in ``hubert_ecg/templates`` (file stems)."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml"))


def recipe_names() -> list[str]:
    """Published fine-tuning recipes shipped in ``hubert_ecg/recipes``, read without importing them
    (that would load PyTorch just to print help)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _cmd_config(args: argparse.Namespace) -> None:
    if args.list or not args.name:
        print("templates:")
        for name in template_names():
            print(f"  {name:<18} {TEMPLATE_HELP.get(name, '')}")
        print("published fine-tuning recipes (use by name: finetune --recipe NAME):")
        print("  " + ", ".join(recipe_names()))
        return
    name = args.name[: -len(".yaml")] if args.name.endswith(".yaml") else args.name
    path = TEMPLATES_DIR / f"{name}.yaml"
    if not path.is_file():
        path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"no template or recipe named {args.name!r} "
            f"(templates: {', '.join(template_names())}; recipes: {', '.join(recipe_names())})"
        )
    text = path.read_text(encoding="utf-8")
    if args.out:
        out = Path(args.out)
        if out.exists() and not args.force:
            raise ValueError(f"{out}: exists; pass --force to overwrite it")
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    else:
        print(text, end="")


@register
def _add(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "config", "print a configuration template or a published recipe (edit, then pass it on)", _cmd_config
    )
    p.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help=f"template ({', '.join(template_names())}) or published recipe name; omit to list them",
    )
    p.add_argument("--list", action="store_true", help="list the templates and published recipes")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of printing")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
