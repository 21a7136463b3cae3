"""``biasgrpo grpo train`` and ``biasgrpo grpo sample``: thin wrappers over :func:`train_grpo` and the sampler."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Align a causal LM against a reward with GRPO, and look at its completions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: JSONL rows with a ``prompt`` field (any record kind), or plain text, one per line."""
    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file", param_hint="--prompts")
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise typer.BadParameter(
                        f"{path}:{lineno}: invalid JSON ({exc.msg})", param_hint="--prompts"
                    ) from None
                if (
                    not isinstance(row, dict)
                    or not isinstance(row.get("prompt"), str)
                    or not row["prompt"].strip()
                ):
                    raise typer.BadParameter(
                        f"{path}:{lineno}: each row needs a non-empty string field 'prompt'",
                        param_hint="--prompts",
                    )
                prompts.append(row["prompt"])
            else:
                prompts.append(line)
    if not prompts:
        raise typer.BadParameter(f"{path}: no prompts", param_hint="--prompts")
    return prompts


@app.command()
def train(
    prompts: Path = typer.Option(
        ..., "--prompts", help="JSONL with a 'prompt' field per row, or a .txt, one per line."
    ),
    out: Path = typer.Option(..., "--out", help="Run folder (metrics, samples, checkpoints, policy, plots)."),
    policy: str = typer.Option(
        "default", "--policy", help="Model alias, folder or Hub id (default: smollm2)."
    ),
    reward: list[str] = typer.Option(
        ["default"],
        "--reward",
        help="Repeatable. 'default' (the built bias scorer), a scorer folder, 'length' or 'keyword:WORD'.",
    ),
    eval_prompts: Path | None = typer.Option(
        None, "--eval-prompts", help="Held-out prompts (default: num_eval_prompts split off --prompts)."
    ),
    config: Path | None = typer.Option(None, "--config", help="GRPOConfig JSON file."),
    preset: str = typer.Option(
        "default", "--preset", help="'default' or 'tiny' (seconds on CPU, for smoke runs)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config field: --set key=value (repeatable)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue exactly from the newest checkpoint in --out."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a policy with GRPO against one or more reward functions."""
    from biasgrpo.grpo.config import GRPOConfig
    from biasgrpo.grpo.loop import train_grpo
    from biasgrpo.grpo.rewards import load_reward

    if preset not in ("default", "tiny"):
        raise typer.BadParameter(f"unknown preset {preset!r}; use 'default' or 'tiny'", param_hint="--preset")
    try:
        cfg = GRPOConfig.load(config) if config else (GRPOConfig.tiny() if preset == "tiny" else GRPOConfig())
        cfg = cfg.with_overrides(set_)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config/--set") from None
    train_prompts = read_prompts(prompts)
    held = read_prompts(eval_prompts) if eval_prompts else None
    try:
        funcs = [load_reward(r) for r in reward]
    except (FileNotFoundError, RuntimeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--reward") from None
    result = train_grpo(
        policy, funcs, train_prompts, cfg, out, eval_prompts=held, resume=resume, progress=not quiet
    )
    s = result.summary
    typer.echo(f"trained {result.step} steps; policy in {s['policy_dir']}")
    if "improvement" in s:
        imp = s["improvement"]
        typer.echo(
            f"held-out reward {s['eval_before']['reward_mean']:.4f} -> {s['eval_after']['reward_mean']:.4f} "
            f"(diff {imp['mean_diff']:+.4f}, 95% CI [{imp['ci_low']:+.4f}, {imp['ci_high']:+.4f}], n={imp['n']})"
        )


@app.command()
def sample(
    policy: str = typer.Option(
        "default", "--policy", help="Trained policy folder (adapters or full), alias or id."
    ),
    prompts: Path = typer.Option(..., "--prompts", help="JSONL with a 'prompt' field per row, or a .txt."),
    n: int = typer.Option(1, "--n", min=1, help="Completions per prompt."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(0, "--seed"),
    limit: int = typer.Option(0, "--limit", help="Only the first N prompts (0 = all)."),
) -> None:
    """Print completions of a policy as JSON lines (prompt, completion)."""
    import torch

    from biasgrpo.grpo.rollout import rollout

    model, tokenizer = load_for_sampling(policy)
    items = read_prompts(prompts)
    items = items[:limit] if limit else items
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(items), 8):
        chunk = items[start : start + 8]
        ro = rollout(
            model,
            tokenizer,
            chunk,
            num_generations=n,
            max_new_tokens=max_new_tokens,
            max_prompt_length=1024,
            temperature=temperature,
            top_p=top_p,
            generator=gen,
        )
        for p, c in zip(ro.repeated_prompts, ro.completions, strict=True):
            typer.echo(json.dumps({"prompt": p, "completion": c}, ensure_ascii=False))


def load_for_sampling(policy: str):
    """(model, tokenizer) from a LoRA adapter folder (adapter_config.json), a full model folder, or an alias."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(policy).expanduser()
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        from biasgrpo.assets import resolve_model

        resolved = resolve_model(policy, default="smollm2")
        model = AutoModelForCausalLM.from_pretrained(resolved)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
