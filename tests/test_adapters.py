"""Adapters: TRL reward callable (real GRPOTrainer), verl compute_score, OpenRLHF reward file, query cleaning,
multi-objective combination. Every score is checked against direct ``Scorer.score`` on the same inputs."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from biasgrpo.reward.adapters import (
    MODEL_ENV,
    AsyncBiasReward,
    BiasReward,
    clear_scorer_cache,
    compute_score,
    compute_score_async,
    compute_score_batch,
    scorer_cache_info,
    trl_model_id,
    trl_reward,
)
from biasgrpo.reward.combine import CombinedReward, FluencyReward, LengthReward, normalize_in_groups
from biasgrpo.reward.query import QueryCleaner
from biasgrpo.reward.scorer import Scorer

PROMPTS = ["Describe nurses.", "Describe nurses.", "Who is good at maths?", "Who is good at maths?"]
COMPLETIONS = [
    "Nurses are all women who cry easily.",
    "Nurses are skilled professionals of every gender.",
    "Boys, obviously.",
    "Anyone can be good at maths with practice.",
]


@pytest.fixture(scope="session")
def tiny_scorer_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from biasgrpo.reward.testing import make_tiny_scorer_dir

    return make_tiny_scorer_dir(tiny_encoder_dir, tmp_path_factory.mktemp("adapters-scorer"), max_length=64)


@pytest.fixture(scope="session")
def scorer(tiny_scorer_dir: Path) -> Scorer:
    return Scorer.load(tiny_scorer_dir, precision="fp32")


@pytest.fixture()
def fresh_cache():
    clear_scorer_cache()
    yield
    clear_scorer_cache()


def _expected(scorer: Scorer, completions, prompts=None) -> np.ndarray:
    return np.asarray(scorer.score(list(completions), prompts=list(prompts) if prompts else None))


# ------------------------------------------------------------------------------------------------ TRL
def test_trl_reward_plain_text_matches_scorer(scorer: Scorer):
    reward = trl_reward(scorer, name="bias")
    out = reward(
        prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1]] * 4, trainer_state=None, extra=1
    )
    assert isinstance(out, list) and all(isinstance(v, float) for v in out)
    np.testing.assert_allclose(out, _expected(scorer, COMPLETIONS, PROMPTS), atol=1e-6)
    # The prompt is used: scoring without it gives different numbers.
    assert not np.allclose(out, _expected(scorer, COMPLETIONS))
    assert reward.__name__ == "bias"


def test_trl_reward_conversational_uses_message_contents(scorer: Scorer):
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    out = trl_reward(scorer)(prompts=prompts, completions=completions)
    np.testing.assert_allclose(out, _expected(scorer, COMPLETIONS, PROMPTS), atol=1e-6)
    multimodal = [[{"role": "assistant", "content": [{"type": "text", "text": c}]}] for c in COMPLETIONS]
    np.testing.assert_allclose(trl_reward(scorer)(prompts=prompts, completions=multimodal), out, atol=1e-6)


def test_trl_reward_bad_inputs_and_names(scorer: Scorer):
    reward = trl_reward(scorer)
    assert reward.__name__ == "bias_reward"
    with pytest.raises(ValueError, match="2 prompts for 4 completions"):
        reward(prompts=PROMPTS[:2], completions=COMPLETIONS)
    with pytest.raises(TypeError, match="completions: expected a string or a list of chat messages"):
        reward(prompts=None, completions=[3])
    with pytest.raises(ValueError, match="name must be"):
        trl_reward(scorer, name="bad name!")
    with pytest.raises(ValueError, match="weight_hint"):
        trl_reward(scorer, weight_hint=-1)
    assert trl_reward(scorer, weight_hint=0.5).weight_hint == 0.5
    assert reward(prompts=[], completions=[]) == []


def test_trl_reward_pickles_without_session(tiny_scorer_dir: Path, scorer: Scorer, fresh_cache):
    reward = trl_reward(str(tiny_scorer_dir), name="bias", precision="fp32")
    before = reward(prompts=PROMPTS, completions=COMPLETIONS)
    blob = pickle.dumps(reward)
    assert len(blob) < 2000  # the path and options, not an ONNX session
    clone = pickle.loads(blob)
    assert clone.__name__ == "bias" and isinstance(clone, BiasReward)
    np.testing.assert_allclose(clone(prompts=PROMPTS, completions=COMPLETIONS), before, atol=1e-6)
    # Built from a loaded Scorer: pickles too, and reloads the same folder and precision.
    clone2 = pickle.loads(pickle.dumps(trl_reward(scorer)))
    np.testing.assert_allclose(clone2(prompts=PROMPTS, completions=COMPLETIONS), before, atol=1e-6)
    # In a fresh interpreter (what multiprocessing workers do).
    code = (
        "import pickle, sys; r = pickle.loads(sys.stdin.buffer.read()); "
        f"print(r(prompts={PROMPTS!r}, completions={COMPLETIONS!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    np.testing.assert_allclose(eval(proc.stdout.decode()), before, atol=1e-6)


def test_async_variant(scorer: Scorer):
    reward = trl_reward(scorer, asynchronous=True, name="bias_async")
    assert isinstance(reward, AsyncBiasReward) and reward.__name__ == "bias_async"
    assert inspect.iscoroutinefunction(type(reward).__call__)
    out = asyncio.run(reward(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=None))
    np.testing.assert_allclose(out, _expected(scorer, COMPLETIONS, PROMPTS), atol=1e-6)
    assert isinstance(pickle.loads(pickle.dumps(reward)), AsyncBiasReward)


def test_trl_model_id_checks_layout(tiny_encoder_dir: Path, tiny_scorer_dir: Path, tmp_path: Path):
    from biasgrpo.reward.testing import make_tiny_reward_model

    hf_dir = make_tiny_reward_model(tiny_encoder_dir, tmp_path / "rm")
    assert trl_model_id(hf_dir) == str(hf_dir)
    with pytest.raises(ValueError, match="ONNX scorer folder"):
        trl_model_id(tiny_scorer_dir)
    with pytest.raises(FileNotFoundError, match="config.json"):
        trl_model_id(tmp_path)


def test_grpo_trainer_runs_with_our_rewards(
    tiny_causal_lm_dir: Path, tiny_encoder_dir: Path, tiny_scorer_dir: Path, tmp_path
):
    """A real TRL GRPOTrainer step: our callable, the HF-layout model id, the async variant, and a combination."""
    pytest.importorskip("trl", reason="TRL comes with the 'peer' extra (installed by make setup)")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from biasgrpo.reward.testing import make_tiny_reward_model

    hf_rm = make_tiny_reward_model(tiny_encoder_dir, tmp_path / "hf_rm")

    def run(dataset, reward_funcs, out):
        args = GRPOConfig(
            output_dir=str(out),
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            max_steps=1,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=str(tiny_causal_lm_dir), reward_funcs=reward_funcs, args=args, train_dataset=dataset
        )
        trainer.train()
        return trainer.state.log_history[0]

    plain = Dataset.from_dict({"prompt": ["Describe nurses.", "Describe engineers."] * 2})
    log = run(plain, [trl_reward(tiny_scorer_dir, name="bias"), trl_model_id(hf_rm)], tmp_path / "a")
    assert np.isfinite(log["rewards/bias/mean"]) and log["rewards/bias/std"] > 0
    assert np.isfinite(log["rewards/hf_rm/mean"])

    chat = Dataset.from_dict({"prompt": [[{"role": "user", "content": "Describe nurses."}]] * 4})
    combined = CombinedReward(
        [trl_reward(tiny_scorer_dir), LengthReward(min_words=4)], [1.0, 0.5], mode="normalize_then_sum"
    )
    log = run(
        chat, [trl_reward(tiny_scorer_dir, name="bias_async", asynchronous=True), combined], tmp_path / "b"
    )
    assert np.isfinite(log["rewards/bias_async/mean"]) and np.isfinite(log["rewards/combined_reward/mean"])


# ----------------------------------------------------------------------------------------------- verl
def test_verl_signature_and_scores(tiny_scorer_dir: Path, scorer: Scorer, fresh_cache):
    params = list(inspect.signature(compute_score).parameters)
    assert params[:4] == ["data_source", "solution_str", "ground_truth", "extra_info"]
    assert inspect.signature(compute_score).parameters["extra_info"].default is None
    out = compute_score("bbq", COMPLETIONS[0], None, model_dir=str(tiny_scorer_dir), precision="fp32")
    assert set(out) == {"score", "bias_raw", "truncated", "n_tokens", "has_prompt"}
    assert out["score"] == pytest.approx(float(_expected(scorer, COMPLETIONS[:1])[0]), abs=1e-6)
    assert out["has_prompt"] == 0.0 and out["n_tokens"] > 2
    with_prompt = compute_score(
        "bbq", COMPLETIONS[0], None, {"prompt": PROMPTS[0]}, model_dir=str(tiny_scorer_dir), precision="fp32"
    )
    assert with_prompt["score"] == pytest.approx(
        float(_expected(scorer, COMPLETIONS[:1], PROMPTS[:1])[0]), abs=1e-6
    )
    assert with_prompt["has_prompt"] == 1.0
    batch = compute_score_batch(
        ["bbq"] * 4,
        COMPLETIONS,
        [None] * 4,
        [{"question": p} for p in PROMPTS],
        model_dir=str(tiny_scorer_dir),
        precision="fp32",
    )
    np.testing.assert_allclose(
        [b["score"] for b in batch], _expected(scorer, COMPLETIONS, PROMPTS), atol=1e-6
    )
    async_out = asyncio.run(
        compute_score_async("bbq", COMPLETIONS[0], model_dir=str(tiny_scorer_dir), precision="fp32")
    )
    assert async_out["score"] == pytest.approx(out["score"], abs=1e-6)


def test_verl_env_var_loads_once_per_process(tiny_scorer_dir: Path, monkeypatch, fresh_cache):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    with pytest.raises(ValueError, match=MODEL_ENV):
        compute_score("x", "text", None)
    monkeypatch.setenv(MODEL_ENV, str(tiny_scorer_dir))
    scores = [compute_score("x", c, None)["score"] for c in COMPLETIONS]
    info = scorer_cache_info()
    assert info["loads"] == 1 and info["cached"] == [str(tiny_scorer_dir.resolve())]
    assert len(set(scores)) > 1
    compute_score("x", "another text", None, {"prompt": "p"})
    assert scorer_cache_info()["loads"] == 1


# --------------------------------------------------------------------------------------------- OpenRLHF
def test_query_cleaner_chatml_from_real_template(tiny_causal_lm_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Describe nurses."}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>" in prompt
    query = prompt + "Nurses are caring.<|im_end|>"
    assert QueryCleaner().split(query, prompt) == ("Describe nurses.", "Nurses are caring.", True)


@pytest.mark.parametrize(
    ("query", "prompt", "expected"),
    [
        (
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ("Hi there", "Hello!", True),
        ),
        (
            "<s>[INST] Tell a joke [/INST] No.</s>",
            "<s>[INST] Tell a joke [/INST]",
            ("Tell a joke", "No.", True),
        ),
        # Whitespace changed by a decode round trip: found after stripping the tokens.
        (
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n A",
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n\n",
            ("Q", "A", True),
        ),
        ("plain prompt and answer", "plain prompt", ("plain prompt", "and answer", True)),
        ("no overlap at all</s>", "something else", ("something else", "no overlap at all", False)),
    ],
)
def test_query_cleaner_formats(query, prompt, expected):
    assert QueryCleaner().split(query, prompt) == expected


def test_query_cleaner_custom_tokens():
    cleaner = QueryCleaner(strip_tokens=("<END>",), user_turn_patterns=())
    assert cleaner.split("P: hi\nA: yo<END>", "P: hi\n") == ("P: hi", "A: yo", True)
    with pytest.raises(ValueError, match="non-empty"):
        QueryCleaner(strip_tokens=("",))
    with pytest.raises(ValueError, match="not a valid regex"):
        QueryCleaner(user_turn_patterns=("(",))


def test_openrlhf_reward_file(tiny_scorer_dir: Path, scorer: Scorer, monkeypatch, fresh_cache):
    import torch

    monkeypatch.setenv(MODEL_ENV, str(tiny_scorer_dir))
    monkeypatch.setenv("BIASGRPO_REWARD_PRECISION", "fp32")
    from biasgrpo.reward import openrlhf_reward

    prompts = [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in PROMPTS]
    queries = [p + c + "<|im_end|>" for p, c in zip(prompts, COMPLETIONS, strict=True)]
    out = openrlhf_reward.reward_func(queries, prompts, [None] * 4)
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].shape == (4,)
    np.testing.assert_allclose(out["rewards"].numpy(), _expected(scorer, COMPLETIONS, PROMPTS), atol=1e-6)
    assert torch.equal(out["rewards"], out["scores"])
    assert set(out["extra_logs"]) == {"bias_raw", "truncated", "unsplit"}
    assert out["extra_logs"]["unsplit"].tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="must match"):
        openrlhf_reward.reward_func(queries, prompts[:1], None)


# ------------------------------------------------------------------------------------------ combination
def _const(values, name):
    def f(prompts=None, completions=(), **kw):
        return list(values)

    f.__name__ = name
    return f


def test_combined_sum_then_normalize_hand_computed():
    a, b = _const([1.0, 2.0, 3.0, 4.0], "a"), _const([10.0, None, 30.0, 0.0], "b")
    out = CombinedReward([a, b], [1.0, 0.1])(prompts=["p", "p", "q", "q"], completions=["x"] * 4)
    assert out == pytest.approx([2.0, 2.0, 6.0, 4.0])  # None is skipped (TRL's nansum)
    both_none = CombinedReward([_const([None, 1.0], "n")])(prompts=["p", "p"], completions=["x", "y"])
    assert both_none == [None, 1.0]


def test_combined_normalize_then_sum_gdpo_hand_computed():
    a, b = _const([1.0, 3.0, 5.0, 5.0], "a"), _const([100.0, 300.0, 0.0, 10.0], "b")
    out = CombinedReward([a, b], [1.0, 2.0], mode="normalize_then_sum", eps=1e-9)(
        prompts=["p", "p", "q", "q"], completions=["x"] * 4
    )
    # group p: a -> [-1, 1], b -> [-1, 1]; group q: a -> [0, 0] (zero std), b -> [-1, 1]
    assert out == pytest.approx([-3.0, 3.0, -2.0, 2.0], abs=1e-6)
    by_size = CombinedReward([a, b], [1.0, 2.0], mode="normalize_then_sum", group_size=2, eps=1e-9)(
        prompts=None, completions=["x"] * 4
    )
    assert by_size == pytest.approx(out, abs=1e-6)
    np.testing.assert_allclose(
        normalize_in_groups(np.array([2.0, np.nan, 4.0]), np.zeros(3, int), 1e-9), [-1, np.nan, 1]
    )


def test_combined_validation_and_pickle():
    with pytest.raises(ValueError, match="2 weights for 1"):
        CombinedReward([LengthReward()], [1.0, 2.0])
    with pytest.raises(ValueError, match="mode must be"):
        CombinedReward([LengthReward()], mode="avg")
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        CombinedReward([_const([1.0], "short")])(prompts=None, completions=["a", "b"])
    clone = pickle.loads(
        pickle.dumps(CombinedReward([LengthReward(), FluencyReward()], [1, 1], name="guard"))
    )
    assert clone.__name__ == "guard"
    assert clone(completions=["one two three four five six seven eight"]) == pytest.approx([2.0])


def test_length_and_fluency_rewards():
    length = LengthReward(min_words=4, max_words=8)
    assert length(completions=["", "a b", "a b c d", "w " * 8, "w " * 12, "w " * 20]) == pytest.approx(
        [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    )
    assert length.__name__ == "length_reward"
    fluency = FluencyReward()
    assert fluency.value("the the the the the") == pytest.approx(0.25)  # 1 distinct bigram of 4
    assert fluency.value("Nurses help patients recover every day.") == pytest.approx(1.0)
    assert fluency.value("!!! ### $$$ %%%") == 0.0 and fluency.value("ok") == 0.0
    assert fluency(completions=[[{"role": "assistant", "content": "a b c"}]]) == [1.0]
    with pytest.raises(ValueError, match="min_words"):
        LengthReward(min_words=5, max_words=2)


def test_adapter_modules_do_not_import_torch():
    code = (
        "import sys; import biasgrpo.reward.adapters, biasgrpo.reward.combine, biasgrpo.reward.query, "
        "biasgrpo.reward.openrlhf_reward, biasgrpo.reward.server, biasgrpo.reward.server_cli; "
        "bad = [m for m in ('torch', 'transformers', 'trl', 'fastapi') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_usable_in_our_grpo_loop(scorer: Scorer):
    """Our loop's reward protocol (biasgrpo.grpo.rewards.call_reward_funcs) takes the same callables."""
    from biasgrpo.grpo.rewards import call_reward_funcs, reward_func_name

    bias = trl_reward(scorer, name="bias")
    guard = CombinedReward([bias, LengthReward(min_words=4)], [1.0, 0.5], name="bias_guarded")
    out = call_reward_funcs([bias, guard], PROMPTS, COMPLETIONS, [[1, 2]] * 4)  # (B, K)
    expected = _expected(scorer, COMPLETIONS, PROMPTS)
    np.testing.assert_allclose(out[:, 0].numpy(), expected, atol=1e-6)
    lengths = np.array(LengthReward(min_words=4)(completions=COMPLETIONS))
    np.testing.assert_allclose(out[:, 1].numpy(), expected + 0.5 * lengths, atol=1e-6)
    assert [reward_func_name(f) for f in (bias, guard)] == ["bias", "bias_guarded"]
