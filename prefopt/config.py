"""Recipe schema and loading: YAML + `base:` inheritance + command-line overrides, validated.

A recipe is a YAML file whose keys are the fields of `Recipe` below. Each loss contributes the
schema of its own `loss:` section (see `prefopt.registry`). Loading is pure: it imports the
user's `imports:` modules (so their losses register) but never loads a model or a dataset, so a
typo fails in well under a second.

All problems are collected and raised together as one `ConfigError`: unknown keys (with the
closest valid full keys suggested), wrong types (key, expected type, value), an unknown loss
name (with the registered names), values out of range.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import prefopt.losses  # noqa: F401  (registers the built-in losses)
import prefopt.rl  # noqa: F401  (registers the built-in regularisers and estimators)
from prefopt.registry import ADVANTAGES, LOSSES, get_advantage, get_loss, get_regulariser
from prefopt.rl.estimators.base import DEFAULT_ADVANTAGE
from prefopt.world.config import WorldConfig
from prefopt.world.data import SHIFTS

DEFAULT_REGULARISER = "kl"
#: Sections whose schema is a registered entry's config, chosen by their ``name``.
SECTIONS = ("loss", "regulariser", "advantage")
#: Keys that moved: a recipe still using one gets an error naming the new key.
RENAMED = {"advantage.grpo_scale": "advantage.scale_rewards (of advantage.name: grpo)"}

#: The shipped recipes travel inside the package (package data), so an installed prefopt finds
#: them from any folder; the repository's top-level `recipes/` is a link to this folder.
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class ConfigError(ValueError):
    """Every problem found in a recipe, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid recipe:\n" + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------- choices
# A setting that takes one of a few words is an Enum: OmegaConf checks it when a recipe is read
# (the message names the key and the allowed words) and the recipe holds the member, a `str`
# equal to its word (``recipe.trainer.precision == "bf16"``), so code compares plain strings.

Family = StrEnum("Family", ["gpt2", "llama"])
WeightDtype = StrEnum("WeightDtype", ["fp32", "bf16", "fp16", "auto"])
ReferenceMode = StrEnum("ReferenceMode", ["auto", "copy", "adapter", "cached", "none"])
DataFormat = StrEnum(
    "DataFormat", ["auto", "preference", "hh", "tldr", "conversation", "sft", "unpaired"]
)
UnpairedFrom = StrEnum("UnpairedFrom", ["rows", "pairs"])
OnBadRow = StrEnum("OnBadRow", ["skip", "error"])
PairLayout = StrEnum("PairLayout", ["packed", "padded"])
SmoothingMethod = StrEnum("SmoothingMethod", ["none", "ids"])
Scheduler = StrEnum("Scheduler", ["constant", "linear", "cosine"])  # after the warm-up
Precision = StrEnum("Precision", ["fp32", "bf16", "fp16"])
Device = StrEnum("Device", ["auto", "cpu", "cuda"])
OnNan = StrEnum("OnNan", ["error", "skip"])
NgramSpace = StrEnum("NgramSpace", ["power", "vocab"])
ValueMode = StrEnum("ValueMode", ["separate", "shared"])
ValueInit = StrEnum("ValueInit", ["auto", "reward_model", "policy"])
# the attention implementations that take the packed layouts' custom masks
TrainAttention = StrEnum("TrainAttention", ["eager", "sdpa"])
# prefopt.rewards.ensemble.ENSEMBLE_MODES (config sits below rewards; a test keeps them equal)
EnsembleMode = StrEnum("EnsembleMode", ["mean", "mean_minus_std", "min", "mean_minus_var"])
# prefopt.models.engines.ENGINES (config sits below models; a test keeps them equal)
EngineName = StrEnum("EngineName", ["hf", "vllm"])
# the dtype a copy-holding engine (vLLM) computes in; auto: the trainer's (docs/engines.md)
EngineDtype = StrEnum("EngineDtype", ["auto", "float32", "bfloat16", "float16"])


# --------------------------------------------------------------------------- schema


@dataclass
class TinyModelConfig:
    """A small architecture built from config (random init), for tests and the offline world."""

    family: Family = Family.gpt2
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    intermediate: int | None = None  # MLP width; default 4 * hidden
    max_positions: int = 128


@dataclass
class LoraSettings:
    """LoRA adapter (peft). target_modules null: peft's per-architecture default."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None


@dataclass
class ModelConfig:
    # A hub name, a local folder, "world:sft" (the world's SFT policy, trained once and cached)
    # or null for a tiny model built from `tiny` with the data's tokenizer.
    name_or_path: str | None = None
    tokenizer: str | None = None  # default: name_or_path's tokenizer, or the world's
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    lora: LoraSettings | None = None
    quantization: str | None = None  # null | "4bit" | "8bit" (bitsandbytes; QLoRA with lora)
    # dtype of loaded weights: fp32 keeps full-precision master weights (trainer.precision
    # adds mixed precision on top); "auto" keeps the checkpoint's own dtype
    dtype: WeightDtype = WeightDtype.fp32
    trust_remote_code: bool = False  # only when the recipe says so: runs the hub repo's code
    gradient_checkpointing: bool = False
    # the attention implementation of the forwards that backpropagate (a DPO or reward-model
    # step, the policy's and the critic's PPO updates); every other forward (generation, the
    # reference, the scorer, the rollout's log-probs) keeps the model's own. "eager": on CPU
    # the bf16 SDPA (flash) backward is the slowest kernel of PPO's padded updates, and eager
    # attention trains them ~15-20% faster (not the packed rows of DPO / RM / GRPO: slower
    # there, and more memory; docs/performance.md); the same numbers up to float rounding.
    # null: the model's own (sdpa) everywhere.
    train_attention: TrainAttention | None = None


@dataclass
class ReferenceConfig:
    # "auto": "adapter" with LoRA, otherwise "copy"; "copy": a frozen copy of the initial
    # policy; "adapter": the policy with its LoRA adapter disabled (no second copy);
    # "cached": reference log-probs computed once, stored on disk keyed by data fingerprint and
    # model hash; "none": no reference (reference-free losses skip it whatever this says).
    mode: ReferenceMode = ReferenceMode.auto
    name_or_path: str | None = None  # default: the policy's initial weights
    cache_dir: str | None = None  # for "cached"; default <output_dir>/../.ref_cache


@dataclass
class DataConfig:
    # "world": the synthetic preference world (offline default); otherwise a local file, glob
    # or folder (jsonl/json/parquet/csv, gzip too) or a hub dataset name for load_dataset.
    source: str = "world"
    format: DataFormat = DataFormat.auto
    # where the unpaired losses (kto, bco) get (prompt, completion, desirable) examples: "rows":
    # the source's unpaired rows (on the world: behaviour responses, desirable iff their gold
    # reward exceeds the train median); "pairs": each preference pair of the source gives a
    # desirable (chosen) and an undesirable (rejected) example
    unpaired: UnpairedFrom = UnpairedFrom.rows
    split: str = "train"
    eval_split: str | None = "test"  # held-out split of the world, a folder or a hub dataset
    eval_source: str | None = None  # a separate held-out file (a single file has no splits)
    # on the world: the training records come from this file instead (e.g. a pipeline's
    # split of the world's pairs); the held-out pairs and the gold evaluation stay the world's
    train_file: str | None = None
    data_dir: str | None = None  # load_dataset's data_dir (e.g. "harmless-base")
    max_rows: int | None = None
    max_eval_rows: int | None = 512
    max_length: int = 96
    max_prompt_length: int = 48
    on_bad_row: OnBadRow = OnBadRow.skip  # "skip": count and report; "error": stop naming the row
    # a row with a field longer than this (characters, before tokenization) is a bad row:
    # one huge row must not exhaust memory; far above any real row (HH-RLHF's longest ~14k)
    max_field_chars: int = 1_000_000
    # a row whose prompt is blank is a bad row (empty_prompt) unless this is true: in
    # preference and SFT data a missing prompt is nearly always a column or parsing mistake
    allow_empty_prompt: bool = False
    # refuse data whose tokens (of the first 1000 rows) are more than this share unknown to the
    # tokenizer: English text with the world's tokenizer would train on nothing but <unk>
    max_unknown_fraction: float = 0.2
    # how preference pairs reach the model (pairwise losses and reward models): "packed" puts
    # each pair's prompt once, its chosen and rejected after it (the rejected tokens never see
    # the chosen ones), several pairs per row and logits only where a completion token is
    # scored -- the same log-probs as "padded" up to float rounding, in a fraction of the
    # compute (docs/performance.md); "padded": prompt+chosen and prompt+rejected as their own
    # right-padded rows (TRL's layout; needed for attention kernels without custom masks)
    layout: PairLayout = PairLayout.packed
    pack_length: int | None = None  # tokens per packed row; null: 2 x max_length
    # share of the training preference pairs with chosen and rejected swapped (chosen at
    # random by the recipe's seed; held-out pairs untouched): Coste et al. 2024's 25% label
    # noise for reward models (prefopt/data/noise.py); pairwise losses and reward models only
    label_noise: float = 0.0


@dataclass
class SmoothingConfig:
    """Iterative data smoothing (IDS; Zhu, Jordan & Jiao 2024, arXiv 2401.16335, Alg. 1).

    With method "ids" every training pair carries a soft label y (initially 1: chosen
    preferred) used as the target of the pairwise loss; at every update
    ``y <- (1 - beta) y + beta * sigmoid(delta)`` with the updated model's gap delta (reward
    models: r_c - r_r; DPO: the implicit-reward margin z), over the whole training set. The
    paper's beta is unverified. A run in which no update can happen is refused: it would be
    plain MLE under the name IDS (a one-epoch run with the default schedule, for example).
    """

    method: SmoothingMethod = SmoothingMethod.none
    beta: float = 0.3  # label update rate: labels move slower than the model for small beta
    # when labels move: 0 = when each epoch ends (the paper's schedule), N = every N optimiser
    # steps (for runs of about one epoch, the usual reward-model practice)
    update_every: int = 0


@dataclass
class TrainerConfig:
    lr: float = 5e-4
    batch_size: int = 8  # per device, per micro-step
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps
    # when set, the run's length in passes over its training examples (pairs, rows, or the
    # prompts of an online run): max_steps becomes ceil(epochs x full global batches per
    # epoch / grad_accum), computed once the data is loaded (TRL's num_train_epochs)
    epochs: float | None = None
    warmup_steps: int = 0
    scheduler: Scheduler = Scheduler.linear  # constant | linear | cosine (after warmup)
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8  # PPO recipes: 1e-5 (Huang et al.'s implementation details)
    max_grad_norm: float | None = 1.0  # null: no clipping
    precision: Precision = Precision.fp32  # mixed precision through accelerate
    device: Device = Device.auto
    # a non-finite loss: "error" stops naming the step and the examples (the last checkpoint
    # stays intact); "skip" drops that micro-batch and counts it in summary.json
    on_nan: OnNan = OnNan.error
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    # experiment trackers besides metrics.jsonl (always written), by accelerate's names:
    # tensorboard, wandb, mlflow, trackio, ... (TRACKERS; prefopt/trainers/tracking.py)
    report_to: list[str] = field(default_factory=list)
    project: str = "prefopt"  # the trackers' project (wandb project, MLflow experiment)
    progress_bar: bool = True


# trainer.report_to: prefopt's metrics.jsonl and the trackers accelerate 1.16 integrates
TRACKERS = ("jsonl", "tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml",
            "dvclive", "swanlab")  # fmt: skip


@dataclass
class EngineSettings:
    """The rollout engine that samples completions (``prefopt.models.engines``,
    docs/engines.md): ``rollout.engine`` for the online trainer, ``eval.engine`` for the gold
    evaluation, ExPO's alpha search and ``prefopt eval``."""

    # hf: transformers' generate on the live model (no copy, nothing to sync); vllm: a vLLM
    # engine colocated in the training process (extra prefopt[vllm])
    name: EngineName = EngineName.hf
    # vLLM: the share of GPU memory it may take (weights, KV cache)
    gpu_memory_utilization: float = 0.3
    # vLLM's CPU backend: the share of host memory it reserves (vLLM's own 0.92 refuses to start
    # beside a trainer)
    cpu_memory_utilization: float = 0.05
    sleep: bool = False  # vLLM's sleep mode between rollouts (GPU only)
    max_model_len: int = 0  # 0: data.max_prompt_length + max_new_tokens
    # vLLM: the dtype of its copy of the weights and of its forwards. auto: what the trainer's
    # forward computes in, as generate does on the live policy: the autocast dtype when the
    # engine is built under trainer.precision bf16 / fp16, else the policy's weights' dtype
    dtype: EngineDtype = EngineDtype.auto
    # vLLM: eager forwards (true) or vLLM's compiled model, with CUDA graphs on GPUs (false).
    # null: vLLM's default (compiled) on GPUs, as TRL's colocate mode; eager on CPUs, where the
    # compiled model sampled no faster here and takes 20-35 s more to start (docs/engines.md)
    enforce_eager: bool | None = None

    def validate(self, key: str) -> list[str]:
        problems = []
        for name in ("gpu_memory_utilization", "cpu_memory_utilization"):
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{key}.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_model_len < 0:
            problems.append(f"{key}.max_model_len must be >= 0 (0: automatic), got "
                            f"{self.max_model_len}")  # fmt: skip
        return problems


@dataclass
class EvalConfig:
    """Generation-based evaluation on the world (gold reward, KL, win rate, diversity)."""

    enabled: bool = True
    # per split (in distribution and out of distribution); 640 x 4 samples keeps the standard
    # error of the mean gold reward below 0.05 (about 20 s on 2 CPU cores for a tiny policy)
    n_prompts: int = 640
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 64
    # V of EAD's n-grams: "power" (V = vocab ** n: no length confound with a small vocabulary,
    # the world's default) or "vocab" (one V for every n, Kirk et al.'s released code)
    ead_ngram_space: NgramSpace = NgramSpace.power
    # graded distribution shifts evaluated besides test and ood, nearest first (world.data.SHIFTS:
    # long, distractor, ood, ood_long); each reports gold, gain and the gap to test with SEs
    shifts: list[str] = field(default_factory=list)
    # best-of-n (Kirk et al.'s BoN): keep the completion reward.scorer prefers among n samples
    # of the policy for each reported sample; 1: off. KL is then log n - (n-1)/n (analytic)
    best_of_n: int = 1
    # sentence-embedding diversity (Kirk et al.): a sentence-transformers model folder or name,
    # or "minilm" (the packaged all-MiniLM-L6-v2, extra `diversity`); null: not measured
    embedding_model: str | None = None
    # NLI diversity (Kirk et al.): a local sequence-classification NLI model; null: not measured
    nli_model: str | None = None
    # what samples the evaluated policies (docs/engines.md); hf: transformers' generate
    engine: EngineSettings = field(default_factory=EngineSettings)


@dataclass
class RolloutConfig:
    """How the online trainer samples (ALGORITHMS.md section 3). ``trainer.batch_size`` is the
    number of prompts per rollout batch; each gets ``samples_per_prompt`` completions."""

    samples_per_prompt: int = 1  # k; the group estimators (rloo, grpo, baselines) need >= 2
    max_new_tokens: int = 32
    temperature: float = 1.0  # log-probs for the loss are recomputed at the same temperature
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    batch_size: int = 256  # sequences per generate call
    # DeepSpeed ZeRO-3: gather the policy's full weights once per rollout for generation (fast;
    # the full model must fit on one device); false: ZeRO-3 gathers layer by layer at every
    # generated token, far slower (DeepSpeed issue #4354). FSDP always gathers once.
    gather_zero3_weights: bool = True
    # the sampling policy's log-probs (PPO's "old" log-probs) from the logits `generate`
    # already computed (as TRL's PPOTrainer does) instead of a second, full forward: one
    # forward fewer per rollout; equal up to float rounding (the cached incremental forward
    # against the full one), so the first minibatch's ratio is 1 up to that rounding. With a
    # shared value head the old log-probs stay the trainer's (its values need the full forward
    # anyway) and the engine's only measure the mismatch (rollout/logp_diff_*). Whatever the
    # engine, these are the engine's own log-probs of the tokens it sampled
    # (docs/algorithms/ppo.md)
    logps_from_generation: bool = False
    # what samples the rollouts (docs/engines.md); hf: transformers' generate on the live policy
    engine: EngineSettings = field(default_factory=EngineSettings)
    # truncated importance sampling (verl; TRL's vllm_importance_sampling_mode token_truncate):
    # the engine also returns its sampled tokens' log-probs, the old log-probs are the
    # trainer's, and each token's policy loss is weighted by min(exp(old - engine), tis_cap),
    # detached; 0: off. Not with logps_from_generation (then the old log-probs are the engine's)
    tis_cap: float = 0.0
    # DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, sec. 3.2, eq. 11): groups
    # whose k rewards are all equal (zero advantage, no gradient) are dropped and more prompts
    # are sampled until the batch is full again, in at most `dynamic_sampling_tries` generation
    # rounds; after the last one the batch is topped up with dropped groups (zero advantage)
    dynamic_sampling: bool = False
    dynamic_sampling_tries: int = 3
    # completions that never reached an EOS are left out of the policy loss (DAPO sec. 3.4;
    # TRL's mask_truncated_completions); they still count in their group's baseline
    mask_truncated: bool = False


@dataclass
class RewardComponent:
    """One reward of a multi-reward rollout (`reward.components`)."""

    scorer: str = ""  # as reward.scorer, or gold:<objective> (one of the world's objectives)
    weight: float = 1.0
    name: str = ""  # logged as objective/rewards/<name>; default: the scorer


@dataclass
class RewardConfig:
    """What scores a rollout: any Scorer, which sees text (so its tokenizer may differ)."""

    # "world:rm" (the world's learned reward model), "world" (the gold reward: an oracle
    # experiment), "gold:<objective>" (one of the world's five objectives, as its share of the
    # gold reward), a reward-model run dir / folder, an ArmoRM folder, or "A,B" (an ensemble);
    # null with `components`
    scorer: str | None = "world:rm"
    # how an ensemble scorer ("A,B,...") combines its members' scores per completion
    # (prefopt/rewards/ensemble.py; Coste et al. 2024, arXiv 2310.02743): mean, min (WCO),
    # mean_minus_var (UWO: mean - ensemble_coef * variance, Coste et al.'s objective) or
    # mean_minus_std (mean - ensemble_coef * standard deviation)
    ensemble: EnsembleMode = EnsembleMode.mean
    ensemble_coef: float = 0.5  # Coste et al.'s UWO weight for best-of-n (0.1 for their PPO)
    # several rewards, each scored and logged on its own; the score is their weighted sum
    # (GDPO, advantage.name: gdpo, normalises each within its group instead). Needs scorer: null
    components: list[RewardComponent] = field(default_factory=list)
    # DAPO's overlong reward shaping (arXiv 2503.14476, sec. 3.4, eq. 13): a completion longer
    # than rollout.max_new_tokens - overlong_buffer tokens loses up to `overlong_penalty`,
    # linearly in the excess, the whole of it at the maximum length; null: off
    overlong_buffer: int | None = None
    overlong_penalty: float = 1.0
    clip: float | None = 5.0  # scores clipped to [-clip, clip]; null: off
    missing_eos_penalty: float | None = -1.0  # added to a completion with no EOS; null: off
    # gain and bias so that the reference policy's samples score mean 0, std 1 (OpenAI's
    # original code), measured once on `normalise_prompts` training prompts
    normalise: bool = False
    normalise_prompts: int = 256


@dataclass
class ValueConfig:
    """The critic of `advantage.name: gae` (unused by the critic-free estimators)."""

    mode: ValueMode = ValueMode.separate  # "separate": its own model; "shared": a policy head
    # "auto": the reward model when it is a sequence classifier of the policy's architecture,
    # else the policy's body; "reward_model" or "policy" to choose
    init: ValueInit = ValueInit.auto
    lr: float | None = None  # default: trainer.lr


@dataclass
class Recipe:
    description: str = ""  # one line, shown by `prefopt recipes`
    seed: int = 0
    output_dir: str | None = None  # default runs/<recipe>-<timestamp>
    imports: list[str] = field(default_factory=list)  # user modules imported first (runs code)
    resume: str | None = None  # null | "auto" (latest checkpoint in output_dir) | a path
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    loss: Any = None  # replaced by the registered loss's own schema
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # online training (loss.name: ppo); offline recipes ignore these sections
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    # how rewards become advantages: replaced by the registered estimator's own schema
    # (prefopt.registry.ADVANTAGES; ALGORITHMS.md sections 3 and 12)
    advantage: Any = None
    regulariser: Any = None  # replaced by the registered regulariser's own schema
    name: str = ""  # the recipe's name, filled by the loader


OPTIONAL_CHOICES: dict[str, tuple[str, ...]] = {
    "model.quantization": ("4bit", "8bit"),  # not identifiers: no Enum
}


#: an engine's settings (``EngineSettings``) that decide how much memory it takes and whether
#: it sleeps between rollouts, never what it samples (the name does; a ``max_model_len`` too
#: short for a call is refused, not sampled differently; vLLM's per-request seeds draw the
#: same tokens whatever its KV-cache size, up to the float rounding of another batching)
ENGINE_RUNTIME_ONLY_FIELDS = (
    "gpu_memory_utilization",
    "cpu_memory_utilization",
    "sleep",
    "max_model_len",
    "enforce_eager",  # vLLM's compiled model computes what its eager one does (up to rounding)
)

#: settings that change how a run goes (speed, memory) or what it checks, never what it learns;
#: a key may be nested (``rollout.engine.sleep``)
RUNTIME_ONLY_KEYS = (
    "rollout.gather_zero3_weights",
    "data.max_unknown_fraction",
    # the packed and padded layouts compute the same log-probs (up to float rounding)
    "data.layout",
    "data.pack_length",
    "model.train_attention",
    *(f"{section}.engine.{name}" for section in ("rollout", "eval")
      for name in ENGINE_RUNTIME_ONLY_FIELDS),
)  # fmt: skip

#: what a resumed run may change against the recipe stored in its folder: how long it runs,
#: where and how it reports and evaluates (``eval.*``), and RUNTIME_ONLY_KEYS; any other
#: difference (the algorithm, the model, the data, a learning rate) would continue one run's
#: checkpoint as another run, so ``resume`` refuses it
RESUMABLE_CHANGES = (
    "name",
    "description",
    "output_dir",
    "resume",
    "trainer.max_steps",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.save_every",
    "trainer.keep_checkpoints",
    "trainer.report_to",
    "trainer.progress_bar",
    "trainer.device",
    "eval.",
    *RUNTIME_ONLY_KEYS,
)


def recipe_differences(stored: Recipe, new: Recipe, allowed: tuple[str, ...] = ()) -> list[str]:
    """``key: stored -> new`` for every setting that differs between two recipes, except the
    keys in ``allowed`` (a key ending in ``.`` allows its whole section)."""

    def flat(recipe: Recipe) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def walk(value: Any, prefix: str) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{prefix}{k}.")
            else:
                out[prefix.rstrip(".")] = value.value if isinstance(value, Enum) else value

        walk(dataclasses.asdict(recipe), "")
        return out

    before, after = flat(stored), flat(new)

    def free(key: str) -> bool:
        return any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)

    return [
        f"{key}: {before.get(key, '(absent)')!r} -> {after.get(key, '(absent)')!r}"
        for key in sorted(before.keys() | after.keys(), key=lambda k: (k != "loss.name", k))
        if not free(key) and before.get(key, "(absent)") != after.get(key, "(absent)")
    ]


# --------------------------------------------------------------------------- loading


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe name (`dpo`, `ablations/x`) in recipes/, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(list_recipes())
    raise ConfigError(
        [
            f"no recipe {str(name_or_path)!r}: not a YAML file, not in {RECIPES_DIR}; "
            f"shipped recipes: {known}"
        ]
    )


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise ConfigError([f"recipe inheritance cycle: {chain}"])
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors
        raise ConfigError([f"{path}: cannot parse YAML: {exc}"]) from None
    if not isinstance(raw, DictConfig):
        raise ConfigError([f"{path}: a recipe must be a mapping of keys, got a list"])
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = Path(str(base))
    if not base_path.suffix:
        base_path = recipe_path(str(base))
    elif not base_path.is_absolute():
        base_path = path.parent / base_path
    parent = _read_with_bases(base_path, (*seen, path))
    parent.pop("description", None)  # a child describes itself
    return _merge_layer(parent, raw)


def _merge_layer(lower: DictConfig, upper: DictConfig) -> DictConfig:
    """Merge `upper` over `lower`. A layer that switches `loss.name` replaces the whole `loss:`
    section: settings of one loss never leak into another (the new loss starts from its own
    defaults plus what this layer sets)."""
    for section in SECTIONS:
        new_name, old_name = _section_name(upper, section), _section_name(lower, section)
        if new_name is not None and old_name is not None and new_name != old_name:
            lower = lower.copy()
            lower.pop(section)
    for key in upper.keys():  # a mapping replaced by a list or a value: validation names it
        if key in lower and isinstance(lower.get(key), DictConfig):
            value = upper._get_node(key)
            if not isinstance(value, DictConfig) and value is not None and not value._is_none():
                lower = lower.copy()
                lower.pop(key)
    merged = OmegaConf.merge(lower, upper)
    assert isinstance(merged, DictConfig)
    return merged


def _section_name(node: DictConfig, section: str) -> Any:
    """``<section>.name`` of a raw recipe layer; None when absent or not a mapping."""
    value = node.get(section) if section in node else None
    return value.get("name") if isinstance(value, DictConfig) else None


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge and validate a recipe. Raises ConfigError listing every problem. A staged
    recipe (one with ``stages:``) is a pipeline: load it with ``prefopt.pipeline``."""
    path = recipe_path(name_or_path)
    raw = _read_with_bases(path)
    if "stages" in raw:
        raise ConfigError(
            [f"{path.stem}: a staged recipe (stages: ...); run it with `prefopt train`"]
        )
    problems, cli = parse_overrides(overrides)
    if cli is not None:
        raw = _merge_layer(raw, cli)
    return recipe_from_node(raw, path.stem, problems)


def validate_recipe(recipe: Any) -> Recipe:
    """Check a recipe built or changed in Python with the same rules and messages as a YAML
    file (``r = load_recipe("dpo"); r.loss.beta = -1`` fails here, naming ``loss.beta``);
    returns the validated copy. Raises ConfigError."""
    if not isinstance(recipe, Recipe):
        raise ConfigError([f"expected a Recipe (prefopt.load_recipe), got {type(recipe).__name__}"])
    # what Python allows and YAML cannot express: an attribute no field declares (a typo such
    # as ``recipe.loss.betta``, which ``asdict`` would drop) and a value of the wrong type
    # (``max_steps = "3"``, which OmegaConf would quietly convert)
    problems = _attribute_problems(recipe)
    if problems:
        raise ConfigError(problems)
    try:
        node = OmegaConf.create(dataclasses.asdict(recipe))
    except OmegaConfBaseException as exc:
        raise ConfigError([f"recipe: {exc}"]) from None
    assert isinstance(node, DictConfig)
    return recipe_from_node(node, recipe.name or "recipe")


def _attribute_problems(obj: Any, prefix: str = "") -> list[str]:
    """Attributes set in Python that no field of the section declares, and field values whose
    Python type the field's annotation does not admit, by full key."""
    problems: list[str] = []
    names = [f.name for f in dataclasses.fields(obj)]
    unknown = [attribute for attribute in vars(obj) if attribute not in names]
    if unknown:  # the message a YAML key gets (suggestions among the section's keys)
        schema = OmegaConf.structured(type(obj))
        problems += [_unknown_key(prefix + a, a, schema, prefix, []) for a in unknown]
    hints = typing.get_type_hints(type(obj))
    for name in names:
        value, key = getattr(obj, name), prefix + name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            problems += _attribute_problems(value, key + ".")
        elif not _admits(hints.get(name, Any), value):
            expected = str(hints[name]).replace("typing.", "").replace("<class '", "")
            expected = expected.replace("'>", "")
            problems.append(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")
    return problems


def _admits(annotation: Any, value: Any) -> bool:
    """Whether ``value`` has a Python type the annotation allows (an int where a float is
    declared, as YAML and OmegaConf allow; never a bool for a number or a str for either)."""
    if annotation is Any:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_admits(arg, value) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(annotation):
        return dataclasses.is_dataclass(value)
    return True  # annotations this check does not model are left to the schema merge


def read_recipe_node(name_or_path: str | Path) -> DictConfig:
    """The raw YAML of a recipe with its ``base:`` chain merged in, not yet validated."""
    return _read_with_bases(recipe_path(name_or_path))


def merge_recipe_nodes(lower: DictConfig, upper: DictConfig) -> DictConfig:
    """``upper`` over ``lower`` as recipe layers merge (a new loss.name replaces loss:)."""
    return _merge_layer(lower, upper)


def parse_overrides(overrides: list[str] | None) -> tuple[list[str], DictConfig | None]:
    """``key=value`` strings as a config node, and the problems of malformed ones."""
    if not overrides:
        return [], None
    problems, nodes = [], []
    for override in overrides:
        if "=" not in override:
            problems.append(f"override {override!r} is not of the form key=value")
            continue
        try:  # one at a time, so that a value YAML cannot parse is named
            nodes.append(OmegaConf.from_dotlist([override]))
        except (OmegaConfBaseException, yaml.YAMLError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(f"override {override!r}: cannot parse its value ({reason})")
    try:
        cli = OmegaConf.merge(*nodes) if nodes else OmegaConf.create()
    except OmegaConfBaseException as exc:
        raise ConfigError([*problems, f"overrides that contradict each other: {exc}"]) from None
    assert isinstance(cli, DictConfig)
    return problems, cli


def recipe_from_node(
    raw: DictConfig, default_name: str, problems: list[str] | None = None
) -> Recipe:
    """Validate a merged recipe node into a :class:`Recipe` (ConfigError lists every problem)."""
    problems = list(problems or [])
    raw = raw.copy()
    raw.pop("base", None)
    problems += _import_user_modules(raw.get("imports") or [])
    problems += _renamed_keys(raw)
    for section in SECTIONS:  # e.g. loss=[1,2]: a section that is not a mapping
        node = raw._get_node(section) if section in raw else None
        if node is not None and not isinstance(node, DictConfig) and not node._is_none():
            problems.append(
                f"{section}: expected a mapping (loss.name: ...), got {node._value()!r}"
            )
            raw.pop(section)

    loss_name = OmegaConf.select(raw, "loss.name", default=None)
    if loss_name is None:
        problems.append("loss.name is required; registered losses: " + ", ".join(sorted(LOSSES)))
        loss_cls: type = LossConfigFallback
    else:
        try:
            loss_cls = get_loss(str(loss_name)).config_cls
        except KeyError as exc:
            problems.append(f"loss.name: {exc.args[0]}")
            loss_cls = LossConfigFallback

    schema = OmegaConf.structured(Recipe)
    schema.loss = OmegaConf.structured(loss_cls)
    for section, default, lookup in (
        ("regulariser", DEFAULT_REGULARISER, get_regulariser),
        ("advantage", DEFAULT_ADVANTAGE, get_advantage),
    ):  # a registered entry's config is the section's schema
        name = OmegaConf.select(raw, f"{section}.name", default=default)
        try:
            section_cls: type = lookup(str(name)).config_cls
        except KeyError as exc:
            problems.append(f"{section}.name: {exc.args[0]}")
            section_cls = LossConfigFallback
        schema[section] = OmegaConf.structured(section_cls)
    bad_keys: list[str] = []
    problems += _check_node(schema, raw, prefix="", all_keys=_all_keys(schema), bad=bad_keys)
    for key in bad_keys:  # drop what cannot be typed, so range checks still see the rest
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(raw, parent) if parent else raw
        if isinstance(node, DictConfig) and leaf in node:
            node.pop(leaf)
    try:  # what was not dropped above (e.g. a key with a dot in it) fails here, named
        merged = OmegaConf.merge(schema, raw)
        merged.name = merged.name or default_name
        recipe = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        described = _describe(exc) if isinstance(exc, OmegaConfBaseException) else f"recipe: {exc}"
        raise ConfigError(list(dict.fromkeys([*problems, described]))) from None
    assert isinstance(recipe, Recipe)
    wrong_items = _list_item_problems(recipe)  # OmegaConf does not type a list's items
    if wrong_items:
        raise ConfigError([*problems, *wrong_items])
    problems += _check_ranges(recipe)  # with an unknown loss too: every problem at once
    if problems:
        raise ConfigError(problems)
    return recipe


@dataclass
class LossConfigFallback:
    """Stands in for an unknown loss so that the other sections are still checked."""

    name: str = ""


def _import_user_modules(modules: Any) -> list[str]:
    problems = []
    if isinstance(modules, str):
        modules = [modules]
    for module in modules:
        try:
            if "." not in sys.path:
                sys.path.insert(0, ".")
            importlib.import_module(str(module))
        except Exception as exc:
            problems.append(f"imports: cannot import {module!r}: {type(exc).__name__}: {exc}")
    return problems


# --------------------------------------------------------------------------- validation


def _all_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node.keys():
        full = f"{prefix}{key!s}"
        keys.append(full)
        child = _schema_child(node, str(key))
        if child is not None:
            keys += _all_keys(child, full + ".")
    return keys


def _schema_child(node: DictConfig, key: str) -> DictConfig | None:
    """The nested schema of `key` when it is a dataclass (also when optional and null)."""
    child_node = node._get_node(key)
    ref_type = getattr(child_node._metadata, "object_type", None) if child_node else None
    value = node[key] if child_node is not None else None
    if isinstance(value, DictConfig):
        return value
    ref = child_node._metadata.ref_type if child_node is not None else None
    # a list of sections (list[Section]) is not a section: a mapping given for it is a type
    # problem of the key, found by the trial merge, not a section to walk into
    is_list = typing.get_origin(ref) is list or any(
        typing.get_origin(a) is list for a in getattr(ref, "__args__", ()) or ()
    )
    inner = _dataclass_of(ref) if child_node is not None and not is_list else None
    # object_type is a class; is_dataclass() narrows to "class or instance"
    inner = inner or (cast(type, ref_type) if dataclasses.is_dataclass(ref_type) else None)
    return OmegaConf.structured(inner) if inner is not None else None


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    for arg in getattr(tp, "__args__", ()) or ():
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def _check_node(
    schema: DictConfig, raw: Any, prefix: str, all_keys: list[str], bad: list[str] | None = None
) -> list[str]:
    """Problems of `raw` against `schema`; the offending full keys are appended to `bad`."""
    problems: list[str] = []
    bad = [] if bad is None else bad
    if not isinstance(raw, DictConfig):
        return [f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {raw!r}"]
    for key in raw.keys():
        full = f"{prefix}{key!s}"
        if key not in schema:
            problems.append(_unknown_key(full, str(key), schema, prefix, all_keys))
            bad.append(full)
            continue
        child_schema = _schema_child(schema, str(key))
        value = raw._get_node(key)
        if child_schema is not None and isinstance(value, DictConfig) and not value._is_none():
            problems += _check_node(child_schema, value, full + ".", all_keys, bad)
            continue
        try:
            trial = OmegaConf.structured(schema) if not isinstance(schema, DictConfig) else schema
            OmegaConf.merge(trial, OmegaConf.create({key: value}))
        except OmegaConfBaseException as exc:
            problems.append(_type_problem(full, schema, str(key), value, exc))
            bad.append(full)
        except Exception as exc:  # pragma: no cover - defensive: report, never crash
            problems.append(f"{full}: {exc}")
            bad.append(full)
    return problems


def _unknown_key(full: str, key: str, schema: DictConfig, prefix: str, all_keys: list[str]) -> str:
    siblings = [f"{prefix}{k!s}" for k in schema.keys()]
    close = difflib.get_close_matches(full, siblings, n=3, cutoff=0.6)
    close += [
        k for k in difflib.get_close_matches(full, all_keys, n=3, cutoff=0.75) if k not in close
    ]
    hint = f"; did you mean {' or '.join(repr(c) for c in close[:3])}?" if close else ""
    valid = ", ".join(str(k) for k in schema.keys())
    where = prefix.rstrip(".") or "the top level"
    return f"unknown key {full!r}{hint} (valid keys under {where}: {valid})"


def _type_problem(full: str, schema: DictConfig, key: str, value: Any, exc: Exception) -> str:
    node = schema._get_node(key)
    ref_type = getattr(node._metadata, "ref_type", Any) if node is not None else Any
    if isinstance(ref_type, type) and issubclass(ref_type, Enum):
        shown = value._value() if hasattr(value, "_value") else value
        words = ", ".join(str(m.value) for m in ref_type)
        return f"{full}: {shown!r} is not one of {words}"
    expected = getattr(ref_type, "__name__", None) or str(ref_type).replace("typing.", "")
    shown = value._value() if hasattr(value, "_value") else value
    return f"{full}: expected {expected}, got {shown!r} ({type(shown).__name__})"


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    return f"{key}: {exc.msg}" if key else str(exc)  # type: ignore[attr-defined]


def _check_ranges(recipe: Recipe) -> list[str]:
    problems: list[str] = []
    flat = OmegaConf.create(dataclasses.asdict(recipe))
    for key, choices in OPTIONAL_CHOICES.items():
        value = OmegaConf.select(flat, key)
        if value is not None and value not in choices:
            problems.append(f"{key}: {value!r} is not one of null, {', '.join(choices)}")
    t, e = recipe.trainer, recipe.eval
    for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
        if getattr(t, name) < 1:
            problems.append(f"trainer.{name} must be >= 1, got {getattr(t, name)}")
    # max_steps 0: no update; the run saves and evaluates its initial policy (a baseline)
    for name in ("max_steps", "eval_every", "save_every", "warmup_steps"):
        if getattr(t, name) < 0:
            problems.append(f"trainer.{name} must be >= 0, got {getattr(t, name)}")
    if t.epochs is not None and t.epochs <= 0:
        problems.append(f"trainer.epochs must be > 0 (or null: use max_steps), got {t.epochs}")
    unknown_trackers = sorted(set(t.report_to) - set(TRACKERS))
    if unknown_trackers:
        supported = ", ".join(TRACKERS)
        problems.append(f"trainer.report_to: unknown {unknown_trackers}; supported: {supported}")
    for name in ("n_prompts", "samples_per_prompt", "max_new_tokens", "batch_size", "best_of_n"):
        if getattr(e, name) < 1:
            problems.append(f"eval.{name} must be >= 1, got {getattr(e, name)}")
    problems += [
        f"eval.shifts: {shift!r} is not one of {', '.join(SHIFTS)}"
        for shift in e.shifts
        if shift not in SHIFTS
    ]
    if e.temperature <= 0 or not 0 < e.top_p <= 1 or e.top_k < 0:
        problems.append(
            f"eval sampling: need temperature > 0, 0 < top_p <= 1, top_k >= 0; got "
            f"{e.temperature}, {e.top_p}, {e.top_k}"
        )
    problems += e.engine.validate("eval.engine")
    if t.lr <= 0:
        problems.append(f"trainer.lr must be > 0, got {t.lr}")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        problems.append(f"trainer.adam_betas must be two numbers in [0, 1), got {t.adam_betas}")
    if not 0 <= recipe.data.label_noise <= 1:
        problems.append(f"data.label_noise must be in [0, 1], got {recipe.data.label_noise}")
    if not 0 <= recipe.data.max_unknown_fraction <= 1:
        problems.append(
            f"data.max_unknown_fraction must be in [0, 1], got {recipe.data.max_unknown_fraction}"
        )
    if recipe.model.dtype in ("fp16", "bf16") and recipe.model.lora is None:
        problems.append(
            f"model.dtype {recipe.model.dtype} without model.lora would train half-precision "
            "weights (no fp32 master copy; fp16 gradients cannot be unscaled): keep fp32 and "
            "set trainer.precision for mixed precision, or add model.lora"
        )
    problems += _non_finite(dataclasses.asdict(recipe))
    lora, tiny = recipe.model.lora, recipe.model.tiny
    if lora is not None:
        if lora.r < 1 or lora.alpha <= 0:
            problems.append(
                f"model.lora: need r >= 1 and alpha > 0, got r={lora.r}, alpha={lora.alpha}"
            )
        if not 0 <= lora.dropout < 1:
            problems.append(f"model.lora.dropout must be in [0, 1), got {lora.dropout}")
    if tiny.layers < 1 or tiny.hidden < 1 or tiny.heads < 1:
        problems.append("model.tiny: layers, hidden and heads must be >= 1")
    elif tiny.hidden % tiny.heads:
        problems.append(
            f"model.tiny.hidden ({tiny.hidden}) must be divisible by model.tiny.heads "
            f"({tiny.heads}): each attention head gets hidden / heads dimensions"
        )
    try:
        recipe.world.validate()
    except ValueError as exc:
        problems.append(f"world: {exc}")
    if recipe.model.quantization is not None and recipe.model.lora is None:
        problems.append(
            f"model.quantization {recipe.model.quantization} without model.lora would train only "
            "the layers bitsandbytes leaves unquantised (embeddings, head, norms): add model.lora "
            "(QLoRA), or drop model.quantization"
        )
    if recipe.reference.mode == "adapter" and recipe.reference.name_or_path:
        problems.append(
            "reference.name_or_path is set but reference.mode is adapter (the policy's own base "
            "with the adapter disabled): use mode copy or cached for a separate reference"
        )
    if recipe.data.max_field_chars < 1:
        problems.append(f"data.max_field_chars must be >= 1, got {recipe.data.max_field_chars}")
    if recipe.data.pack_length is not None and recipe.data.pack_length < 1:
        problems.append(f"data.pack_length must be >= 1 or null, got {recipe.data.pack_length}")
    if recipe.data.max_prompt_length >= recipe.data.max_length:
        problems.append(
            f"data.max_prompt_length ({recipe.data.max_prompt_length}) must be smaller than "
            f"data.max_length ({recipe.data.max_length})"
        )
    if recipe.data.train_file and recipe.data.source != "world":
        problems.append(
            "data.train_file replaces the world's training records; with another data.source "
            "set data.source to the file instead"
        )
    if recipe.resume not in (None, "auto") and not Path(recipe.resume).exists():
        problems.append(f"resume: {recipe.resume!r} is neither 'auto' nor an existing path")
    if recipe.smoothing.update_every < 0:
        problems.append(
            f"smoothing.update_every must be >= 0 (0: every epoch), got "
            f"{recipe.smoothing.update_every}"
        )
    if not 0 < recipe.smoothing.beta <= 1:
        problems.append(f"smoothing.beta must be in (0, 1], got {recipe.smoothing.beta}")
    if recipe.loss is None or recipe.loss.name not in LOSSES:  # reported: the loss checks need it
        return problems
    problems += _check_unpaired(recipe)
    if recipe.smoothing.method == "ids":
        entry = get_loss(recipe.loss.name)
        if not getattr(entry.build, "supports_soft_labels", False):
            takes = sorted(
                n for n, x in LOSSES.items() if getattr(x.build, "supports_soft_labels", False)
            )
            problems.append(
                "smoothing.method: ids needs a loss that trains on soft labels "
                f"({', '.join(takes)}); loss {recipe.loss.name!r} would ignore them"
            )
    summaries = getattr(recipe.loss, "logps_summaries", None)
    if recipe.reference.mode == "cached" and callable(summaries) and summaries()[1]:
        problems.append(
            "reference.mode: cached stores whole-completion log-probs, and loss.ld_alpha needs "
            "the reference's shared-length sums too: use reference.mode auto or copy"
        )
    for section in (recipe.loss, recipe.regulariser, recipe.advantage):
        validate = getattr(section, "validate", None)
        if callable(validate):
            problems += validate()
    problems += _check_online(recipe)
    return problems


def _check_unpaired(recipe: Recipe) -> list[str]:
    """``data.unpaired`` belongs to the unpaired losses; KTO's mismatched pairs need two
    examples per micro-batch; the reference cache holds pairs only."""
    entry = get_loss(recipe.loss.name)
    if entry.kind != "unpaired":
        if recipe.data.unpaired != "rows":
            return [
                f"data.unpaired: {recipe.data.unpaired!r} applies to the unpaired losses "
                f"({', '.join(sorted(n for n, e in LOSSES.items() if e.kind == 'unpaired'))}); "
                f"loss {recipe.loss.name!r} trains on {entry.kind} data"
            ]
        return []
    problems = []
    if getattr(entry.build, "needs_mismatched", False) and recipe.trainer.batch_size < 2:
        problems.append(
            f"trainer.batch_size must be >= 2 for loss {recipe.loss.name!r}: its KL estimate "
            "pairs each prompt with another example's completion in the micro-batch"
        )
    if recipe.reference.mode == "cached":
        problems.append(
            "reference.mode: cached stores the reference log-probs of preference pairs; loss "
            f"{recipe.loss.name!r} trains on unpaired examples: use auto, copy or adapter"
        )
    return problems


def _list_item_problems(obj: Any, prefix: str = "") -> list[str]:
    """Items of ``list[int | float | str]`` fields that are not of the item type, by key."""
    problems: list[str] = []
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return problems
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            problems += _list_item_problems(value, key + ".")
            continue
        lists = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if t is not None]
        item = next((typing.get_args(t)[0] for t in lists if typing.get_origin(t) is list), None)
        if item not in (int, float, str) or not isinstance(value, list):
            continue
        allowed = (int, float) if item is float else item
        wrong = [v for v in value if not isinstance(v, allowed) or isinstance(v, bool)]
        if wrong:
            problems.append(f"{key}: expected a list of {item.__name__}, got {value!r}")
    return problems


def _non_finite(values: Any, prefix: str = "") -> list[str]:
    """Every NaN or infinite number of a recipe, by key (``loss.beta: must be finite``)."""
    if isinstance(values, dict):
        return [p for k, v in values.items() for p in _non_finite(v, f"{prefix}{k}.")]
    if isinstance(values, list):
        return [p for i, v in enumerate(values) for p in _non_finite(v, f"{prefix}{i}.")]
    if isinstance(values, float) and not math.isfinite(values):
        return [f"{prefix.rstrip('.')}: must be a finite number, got {values}"]
    return []


def _check_online(recipe: Recipe) -> list[str]:
    """Settings of the online trainer that only make sense together."""
    if get_loss(recipe.loss.name).kind != "online":
        return []
    problems = []
    r, a = recipe.rollout, recipe.advantage
    for name in ("samples_per_prompt", "max_new_tokens", "batch_size"):
        if getattr(r, name) < 1:
            problems.append(f"rollout.{name} must be >= 1, got {getattr(r, name)}")
    if r.temperature <= 0 or not 0 < r.top_p <= 1 or r.top_k < 0:
        problems.append(
            "rollout sampling: need temperature > 0, 0 < top_p <= 1, top_k >= 0; got "
            f"{r.temperature}, {r.top_p}, {r.top_k}"
        )
    needs_group = a.name in ADVANTAGES and get_advantage(a.name).needs_group
    if needs_group and r.samples_per_prompt < 2:
        problems.append(
            f"advantage.name {a.name} compares the samples of one prompt: set "
            f"rollout.samples_per_prompt >= 2, got {r.samples_per_prompt}"
        )
    if getattr(get_loss(recipe.loss.name).build, "pairs", False) and r.samples_per_prompt != 2:
        problems.append(
            f"loss.name {recipe.loss.name} trains on pairs: set rollout.samples_per_prompt: 2, "
            f"got {r.samples_per_prompt}"
        )
    if r.dynamic_sampling and not needs_group:
        problems.append(
            "rollout.dynamic_sampling drops groups whose rewards are all equal: it needs a "
            f"group estimator (advantage.name), not {a.name}"
        )
    if r.dynamic_sampling_tries < 1:
        problems.append(
            f"rollout.dynamic_sampling_tries must be >= 1, got {r.dynamic_sampling_tries}"
        )
    problems += r.engine.validate("rollout.engine") + _check_tis(recipe)
    problems += _check_reward(recipe.reward, r.max_new_tokens)
    if recipe.trainer.grad_accum != 1:
        problems.append(
            "trainer.grad_accum must be 1 for online training: a step is one rollout batch "
            "(trainer.batch_size prompts) and loss.minibatch_size sets the update size"
        )
    rollouts = recipe.trainer.batch_size * r.samples_per_prompt
    minibatch = getattr(recipe.loss, "minibatch_size", 1)
    if 0 < minibatch < rollouts and rollouts % minibatch:
        problems.append(
            f"loss.minibatch_size ({minibatch}) must divide the rollouts of a step "
            f"(trainer.batch_size x rollout.samples_per_prompt = {rollouts}) or be at least "
            "as large: the rest would never be trained on"
        )
    return problems


def _check_tis(recipe: Recipe) -> list[str]:
    """``rollout.tis_cap``: 0 (off) or a cap >= 1 on a per-token policy loss, with the old
    log-probs recomputed by the trainer."""
    r = recipe.rollout
    if r.tis_cap == 0:
        return []
    if r.tis_cap < 1:
        return [
            f"rollout.tis_cap must be 0 (off) or >= 1, got {r.tis_cap}: a cap below 1 would "
            "scale down even the tokens where engine and trainer agree (weight 1)"
        ]
    if r.logps_from_generation:
        return [
            "rollout.tis_cap corrects the old log-probs the trainer recomputes towards the "
            "engine's; with rollout.logps_from_generation the old log-probs are the engine's "
            "own and PPO's ratio already corrects against them: set one of the two"
        ]
    if not getattr(get_loss(recipe.loss.name).build, "takes_token_weights", False):
        return [f"rollout.tis_cap weights a per-token policy loss; loss.name "
                f"{recipe.loss.name} has none"]  # fmt: skip
    return []


def _check_reward(reward: RewardConfig, max_new_tokens: int) -> list[str]:
    problems = []
    if reward.clip is not None and reward.clip <= 0:
        problems.append(f"reward.clip must be > 0 or null, got {reward.clip}")
    if reward.ensemble_coef < 0 or not math.isfinite(reward.ensemble_coef):
        problems.append(f"reward.ensemble_coef must be finite and >= 0, got {reward.ensemble_coef}")
    if reward.normalise_prompts < 2:
        problems.append("reward.normalise_prompts must be >= 2")
    if reward.components and reward.scorer is not None:
        problems.append(
            "reward.components replaces reward.scorer: set reward.scorer: null (it is "
            f"{reward.scorer!r})"
        )
    if not reward.components and not reward.scorer:
        problems.append("reward.scorer: set a scorer, or list reward.components")
    names = [c.name or c.scorer for c in reward.components]
    for i, component in enumerate(reward.components):
        if not component.scorer:
            problems.append(f"reward.components.{i}.scorer is required")
        if names.count(names[i]) > 1:
            problems.append(f"reward.components.{i}: the name {names[i]!r} is used twice")
    if reward.overlong_buffer is not None and not 0 < reward.overlong_buffer <= max_new_tokens:
        problems.append(
            f"reward.overlong_buffer must be in [1, rollout.max_new_tokens = {max_new_tokens}] "
            f"or null, got {reward.overlong_buffer}"
        )
    if reward.overlong_penalty < 0:
        problems.append(f"reward.overlong_penalty must be >= 0, got {reward.overlong_penalty}")
    return problems


def _renamed_keys(raw: DictConfig) -> list[str]:
    """A recipe that still uses a key that moved: the error names the new key (and the key
    is dropped so that it is not reported as unknown as well)."""
    problems = []
    for old, new in RENAMED.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(raw, parent, default=None)
        if isinstance(node, DictConfig) and leaf in node:
            problems.append(f"{old} moved: use {new}")
            node.pop(leaf)
    return problems


def to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def save_recipe(recipe: Recipe, path: Path) -> None:
    path.write_text(f"# resolved recipe; rerun with: prefopt train {path}\n" + to_yaml(recipe))


__all__ = [
    "ConfigError",
    "merge_recipe_nodes",
    "parse_overrides",
    "read_recipe_node",
    "recipe_from_node",
    "validate_recipe",
    "recipe_differences",
    "ENGINE_RUNTIME_ONLY_FIELDS",
    "RESUMABLE_CHANGES",
    "RUNTIME_ONLY_KEYS",
    "Recipe",
    "load_recipe",
    "list_recipes",
    "recipe_path",
    "save_recipe",
]
