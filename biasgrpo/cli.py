"""The ``biasgrpo`` command line: a thin typer app over the library functions.

Each component owns its commands in its own ``cli.py``; this module only wires them together.
Heavy libraries (torch, transformers) are imported inside command bodies, so ``biasgrpo --help``
answers instantly.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="biasgrpo",
    help="Bias reward models and GRPO: build bias data, train/distill/export a reward, align a policy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module, attribute, kind, name): "group" entries become `biasgrpo NAME ...` sub-apps, "command" entries
# become top-level commands. A component that is not built yet is skipped; any other import error is real.
_COMPONENTS: list[tuple[str, str, str, str]] = [
    ("biasgrpo.data_synth.cli", "data_app", "group", "data"),
    ("biasgrpo.data_synth.synth_cli", "synth_command", "command", "synth"),
    ("biasgrpo.reward.cli", "app", "group", "reward"),
    ("biasgrpo.reward.server_cli", "serve_command", "command", "serve"),
    ("biasgrpo.grpo.cli", "app", "group", "grpo"),
    ("biasgrpo.evaluate.cli", "app", "group", "eval"),
    ("biasgrpo.pipeline", "pipeline_command", "command", "pipeline"),
]


def _register(root: typer.Typer) -> None:
    for module_name, attr, kind, name in _COMPONENTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        target = getattr(module, attr, None)
        if target is None:
            continue
        if kind == "group":
            root.add_typer(target, name=name)
        else:
            root.command(name=name)(target)


@app.callback()
def _root(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-v info, -vv debug)."),
) -> None:
    """Configure logging once, for every command (library modules never touch handlers)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console-script entry point."""
    _register(app)
    app()


if __name__ == "__main__":
    main()
