"""Plug the bias scorer into other RLHF trainers: TRL (``reward_funcs``) and verl (``compute_score``).

TRL ``GRPOTrainer``::

    from biasgrpo.reward.adapters import trl_reward
    trainer = GRPOTrainer(..., reward_funcs=[trl_reward("runs/demo/reward/onnx")])

verl (``custom_reward_function.path`` = this file's path, ``name`` = ``compute_score``; the model folder
comes from ``reward_kwargs.model_dir`` or the ``BIASGRPO_REWARD_MODEL`` environment variable)::

    BIASGRPO_REWARD_MODEL=runs/demo/reward/onnx python -m verl.trainer.main_ppo \\
        custom_reward_function.path=$(python -c "import biasgrpo.reward.adapters as m; print(m.__file__)") \\
        custom_reward_function.name=compute_score

Scorers are loaded lazily, once per process and per (folder, load options), and shared by every adapter
object in that process (:func:`get_scorer`). Adapters pickle as their folder path, never as a session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biasgrpo.reward.scorer import SCORER_CONFIG, Scorer

logger = logging.getLogger(__name__)

MODEL_ENV = "BIASGRPO_REWARD_MODEL"
"""Environment variable naming the scorer folder for verl / OpenRLHF when no ``model_dir`` is passed."""

_CACHE: dict[tuple[Any, ...], Scorer] = {}
_CACHE_LOCK = threading.Lock()
_LOADS = 0


def _cache_key(model_dir: str | os.PathLike[str], load_kwargs: dict[str, Any]) -> tuple[Any, ...]:
    return (str(Path(model_dir).expanduser().resolve()), tuple(sorted(load_kwargs.items())))


def get_scorer(model_dir: str | os.PathLike[str] | None = None, **load_kwargs: Any) -> Scorer:
    """The process-wide scorer for ``model_dir`` (default: ``$BIASGRPO_REWARD_MODEL``), loaded on first use.

    ``load_kwargs`` go to :meth:`Scorer.load` (``precision``, ``provider``, ``num_threads``, ``batch_size``);
    each distinct combination is loaded once per process.
    """
    global _LOADS
    if model_dir is None or model_dir == "":
        model_dir = os.environ.get(MODEL_ENV) or None
        if model_dir is None:
            raise ValueError(
                f"no reward model folder: pass model_dir=... (verl: custom_reward_function.reward_kwargs."
                f"model_dir) or set the environment variable {MODEL_ENV} to an exported scorer folder"
            )
    key = _cache_key(model_dir, load_kwargs)
    with _CACHE_LOCK:
        scorer = _CACHE.get(key)
        if scorer is None:
            scorer = Scorer.load(model_dir, **load_kwargs)
            _CACHE[key] = scorer
            _LOADS += 1
            logger.info("bias scorer loaded from %s (%d load(s) in this process)", model_dir, _LOADS)
    return scorer


def scorer_cache_info() -> dict[str, Any]:
    """How many scorers this process has loaded, and which folders (for tests and debugging)."""
    with _CACHE_LOCK:
        return {"loads": _LOADS, "cached": [k[0] for k in _CACHE]}


def clear_scorer_cache() -> None:
    """Forget every cached scorer (the next call loads again)."""
    global _LOADS
    with _CACHE_LOCK:
        _CACHE.clear()
        _LOADS = 0


# --------------------------------------------------------------------------------------------------- TRL
def message_text(value: Any, *, field: str = "completions") -> str:
    """Plain text of a TRL prompt/completion: a string, or a list of chat messages.

    For a conversation the text is the content of the last message (the completion's assistant turn, or
    the prompt's final user turn); multimodal content parts contribute their ``text`` parts.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, Sequence) and value and all(isinstance(m, dict) for m in value):
        content = value[-1].get("content", "")
        if isinstance(content, list):  # multimodal: [{"type": "text", "text": ...}, {"type": "image"}]
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise TypeError(f"{field}: message content must be a string, got {type(content).__name__}")
        return content
    if isinstance(value, Sequence) and not value:
        return ""
    raise TypeError(f"{field}: expected a string or a list of chat messages, got {type(value).__name__}")


class BiasReward:
    """A TRL reward function backed by the bias scorer (higher = less biased).

    Call with keyword arguments ``prompts`` and ``completions`` (strings or chat-message lists) plus any
    others (ignored); returns one float per completion. ``__name__`` is the TRL metric name
    (``rewards/<name>/mean``). Pickles as the folder path and load options; the scorer is reloaded (once per
    process) after unpickling.
    """

    def __init__(
        self,
        scorer_or_path: Scorer | str | os.PathLike[str] | None = None,
        *,
        name: str = "bias_reward",
        weight_hint: float | None = None,
        use_prompts: bool = True,
        **load_kwargs: Any,
    ) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(
                f"name must be a non-empty identifier-like string (used as a metric name), got {name!r}"
            )
        if weight_hint is not None and not float(weight_hint) >= 0:
            raise ValueError(f"weight_hint must be >= 0 (TRL reward_weights), got {weight_hint}")
        self.__name__ = name
        self.weight_hint = None if weight_hint is None else float(weight_hint)
        self.use_prompts = use_prompts
        self._scorer: Scorer | None = None
        if isinstance(scorer_or_path, Scorer):
            self._scorer = scorer_or_path
            self.model_dir: str | None = str(scorer_or_path.model_dir)
            load_kwargs.setdefault("precision", scorer_or_path.precision)
        else:
            self.model_dir = None if scorer_or_path is None else str(scorer_or_path)
        self.load_kwargs = load_kwargs

    @property
    def scorer(self) -> Scorer:
        """The scorer, loaded on first use (once per process and folder)."""
        if self._scorer is None:
            self._scorer = get_scorer(self.model_dir, **self.load_kwargs)
        return self._scorer

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_scorer"] = None  # ONNX sessions do not pickle; reload from model_dir
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_dir!r}, name={self.__name__!r})"

    def score(self, prompts: Sequence[Any] | None, completions: Sequence[Any]) -> list[float]:
        """Scores for a batch of TRL prompts/completions (plain or conversational)."""
        texts = [message_text(c, field="completions") for c in completions]
        if not texts:
            return []
        ps = None
        if self.use_prompts and prompts is not None:
            if len(prompts) != len(texts):
                raise ValueError(f"got {len(prompts)} prompts for {len(texts)} completions")
            ps = [message_text(p, field="prompts") for p in prompts]
        return [float(s) for s in self.scorer.score(texts, prompts=ps)]

    def __call__(
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any
    ) -> list[float]:
        return self.score(prompts, completions)


class AsyncBiasReward(BiasReward):
    """The async variant: ``await reward(prompts=..., completions=...)``; scoring runs in a worker thread,
    so TRL can run it concurrently with other async reward functions."""

    async def __call__(  # type: ignore[override]
        self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **kwargs: Any
    ) -> list[float]:
        self.scorer  # load (once) before leaving the event loop's thread  # noqa: B018
        return await asyncio.to_thread(self.score, prompts, completions)


def trl_reward(
    scorer_or_path: Scorer | str | os.PathLike[str] | None = None,
    *,
    name: str = "bias_reward",
    weight_hint: float | None = None,
    asynchronous: bool = False,
    **load_kwargs: Any,
) -> BiasReward:
    """A callable for TRL ``GRPOTrainer(reward_funcs=[...])``; pass ``weight_hint`` on to ``reward_weights``.

    ``scorer_or_path``: a loaded :class:`Scorer`, an exported scorer folder, or None for
    ``$BIASGRPO_REWARD_MODEL``. ``asynchronous=True`` returns :class:`AsyncBiasReward`.
    """
    cls = AsyncBiasReward if asynchronous else BiasReward
    return cls(scorer_or_path, name=name, weight_hint=weight_hint, **load_kwargs)


def trl_model_id(model_dir: str | os.PathLike[str]) -> str:
    """Check that ``model_dir`` is a reward model in the Hugging Face layout and return it as a TRL model id.

    TRL loads a string in ``reward_funcs`` with ``AutoModelForSequenceClassification(num_labels=1)``. Our
    teacher and truncated students are saved that way; the ONNX scorer folder and the embedding-head
    student are not (use :func:`trl_reward` for those). Note that TRL then feeds ``prompt + completion``
    as one text, not our pair template, so its scores differ somewhat from :class:`Scorer` scores.
    """
    path = Path(model_dir).expanduser()
    if (path / SCORER_CONFIG).is_file():
        raise ValueError(
            f"{path} is an ONNX scorer folder, which TRL cannot load as a model id: "
            "use reward_funcs=[trl_reward(path)] instead, or pass the teacher/student folder it was exported from"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {path} is not a Hugging Face model folder")
    reward_cfg = path / "reward_config.json"
    if (
        reward_cfg.is_file()
        and json.loads(reward_cfg.read_text(encoding="utf-8")).get("kind") == "embedding_head"
    ):
        raise ValueError(
            f"{path} is an embedding-head student (not an HF classifier): use trl_reward instead"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    n_labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    if n_labels not in (None, 1):
        raise ValueError(f"{config_path}: a reward model needs num_labels=1, this one has {n_labels}")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        raise FileNotFoundError(f"{path} has no tokenizer files; TRL needs one next to the model")
    return str(path)


# -------------------------------------------------------------------------------------------------- verl
def _prompt_from_extra(extra_info: Any) -> str | None:
    if not isinstance(extra_info, dict):
        return None
    for key in ("prompt", "question", "query"):
        value = extra_info.get(key)
        if value:
            return message_text(value, field=f"extra_info[{key!r}]")
    return None


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    *,
    model_dir: str | None = None,
    precision: str | None = None,
    use_prompt: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward: the bias score of ``solution_str`` (the response only).

    The scorer folder is ``model_dir`` (verl: ``custom_reward_function.reward_kwargs.model_dir``) or
    ``$BIASGRPO_REWARD_MODEL``; it is loaded once per process. When ``extra_info`` carries the prompt (key
    ``prompt``, ``question`` or ``query``), it is scored as the pair's prompt. Returns ``{"score": float,
    "bias_raw": float, "truncated": float, "n_tokens": float, "has_prompt": float}`` (verl logs the extra keys).
    """
    load_kwargs = {"precision": precision} if precision else {}
    scorer = get_scorer(model_dir, **load_kwargs)
    prompt = _prompt_from_extra(extra_info) if use_prompt else None
    result = scorer.score_with_info([solution_str], prompts=[prompt] if prompt else None)
    return {
        "score": float(result.scores[0]),
        "bias_raw": float(result.raw[0]),
        "truncated": float(result.truncated[0]),
        "n_tokens": float(result.n_tokens[0]),
        "has_prompt": float(prompt is not None),
    }


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any] | None = None,
    extra_infos: Sequence[dict[str, Any] | None] | None = None,
    *,
    model_dir: str | None = None,
    precision: str | None = None,
    use_prompt: bool = True,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """verl's batch reward manager form (``reward_model.reward_manager=batch``): one model call per batch."""
    n = len(solution_strs)
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * n
    if len(extra_infos) != n:
        raise ValueError(f"extra_infos has {len(extra_infos)} entries for {n} solution_strs")
    load_kwargs = {"precision": precision} if precision else {}
    scorer = get_scorer(model_dir, **load_kwargs)
    prompts = [_prompt_from_extra(e) if use_prompt else None for e in extra_infos]
    result = scorer.score_with_info(list(solution_strs), prompts=prompts)
    return [
        {
            "score": float(result.scores[i]),
            "bias_raw": float(result.raw[i]),
            "truncated": float(result.truncated[i]),
            "n_tokens": float(result.n_tokens[i]),
            "has_prompt": float(prompts[i] is not None),
        }
        for i in range(n)
    ]


async def compute_score_async(
    data_source: Any,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Async form of :func:`compute_score` for verl's async reward loop (scoring runs in a worker thread)."""
    return await asyncio.to_thread(
        compute_score, data_source, solution_str, ground_truth, extra_info, **kwargs
    )
