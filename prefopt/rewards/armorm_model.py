"""ArmoRM as a usable reward model: frozen backbone features + regression + gate.

Wang et al. 2024, "Interpretable Preferences via Multi-Objective Reward Modeling and
Mixture-of-Experts" (arXiv 2406.12845), sections 3.1-3.2. The math (ridge regression, verbosity
decorrelation, the gating network) lives in `prefopt.rewards.armorm`; this module extracts the
features and packages everything behind the `Scorer` interface, with `explain()` returning the
overall score, each objective's score and the gate's weights for every response.

Features: the paper uses the last token's final hidden state. ``pooling`` may instead be "mean"
(mean over the response tokens), "last_mean" (both concatenated) or "all_layers" (last and mean of
every layer): deliberate, configurable deviations for small backbones whose last state does not
encode counts such as length. Stage 1 is the paper's linear layer or, with ``regression: mlp``,
an MLP probe (saved with the head; ``armorm.json`` says which).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from prefopt.data import tokenize_prompts
from prefopt.losses.armorm import ArmoRMConfig
from prefopt.rewards.armorm import ArmoRMHead, ObjectiveMLP
from prefopt.rewards.encoding import encode_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class FeatureExtractor:
    """Frozen backbone -> pooled final hidden states for prompts and prompt+response pairs."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        pooling: str,
        device: torch.device,
        max_length: int = 128,
        max_prompt_length: int = 64,
        batch_size: int = 64,
    ):
        self.backbone = backbone.to(device).eval().requires_grad_(False)
        self.tokenizer, self.pooling, self.device = tokenizer, pooling, device
        self.max_length, self.max_prompt_length, self.batch_size = (
            max_length,
            max_prompt_length,
            batch_size,
        )

    @torch.no_grad()
    def _pool(self, sequences: list[list[int]], starts: list[int]) -> Tensor:
        out = []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(sequences), self.batch_size):
            chunk, chunk_starts = (
                sequences[i : i + self.batch_size],
                starts[i : i + self.batch_size],
            )
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            span = torch.zeros((len(chunk), width))
            for row, (seq, start) in enumerate(zip(chunk, chunk_starts, strict=True)):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                span[row, start : len(seq)] = 1
            states = self.backbone(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                output_hidden_states=True,
                use_cache=False,
            ).hidden_states
            layers = states if self.pooling == "all_layers" else states[-1:]
            pooled = []
            for hidden in layers:
                hidden = hidden.float().cpu()
                last = hidden[torch.arange(len(chunk)), mask.sum(1) - 1]
                weights = span.unsqueeze(-1)
                mean = (hidden * weights).sum(1) / span.sum(1, keepdim=True).clamp(min=1)
                pooled += {"last": [last], "mean": [mean]}.get(self.pooling, [last, mean])
            out.append(torch.cat(pooled, -1))
        return torch.cat(out)

    def responses(self, prompts: list[str], completions: list[str]) -> Tensor:
        examples = encode_pairs(
            self.tokenizer, prompts, completions, self.max_length, self.max_prompt_length
        )
        seqs = [e["prompt_ids"] + e["completion_ids"] for e in examples]
        return self._pool(seqs, [len(e["prompt_ids"]) for e in examples])

    def prompts(self, prompts: list[str]) -> Tensor:
        examples = tokenize_prompts(
            [{"prompt": p} for p in prompts],
            self.tokenizer,
            max_prompt_length=self.max_prompt_length,
        )
        seqs = [e["prompt_ids"] for e in examples]
        return self._pool(seqs, [0] * len(seqs))


class ArmoRMScorer:
    """ArmoRM behind the `Scorer` interface; `explain` shows why a response scored as it did."""

    def __init__(self, features: FeatureExtractor, head: ArmoRMHead, objective_names: list[str]):
        self.features, self.head, self.objective_names = features, head.eval(), objective_names

    @torch.no_grad()
    def explain(self, prompts: list[str], completions: list[str]) -> dict[str, Any]:
        out = self.head(
            self.features.responses(prompts, completions), self.features.prompts(prompts)
        )
        return {
            "score": out["score"],
            "objectives": out["objectives"],
            "gate": out["gate"],
            "objective_names": self.objective_names,
        }

    def score(self, prompts: list[str], completions: list[str]) -> Tensor:
        return self.explain(prompts, completions)["score"]

    def save_pretrained(self, folder: Path, settings: dict) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # the body only (an RM backbone's score head is not part of ArmoRM): self-contained
        backbone = cast("PreTrainedModel", self.features.backbone)
        backbone.save_pretrained(folder / "backbone")
        self.features.tokenizer.save_pretrained(folder / "backbone")
        save_file(
            {k: v.contiguous() for k, v in self.head.state_dict().items()},
            folder / "head.safetensors",
        )
        meta = {
            "objective_names": self.objective_names,
            "pooling": self.features.pooling,
            "regression_shape": list(self.head.shape),
            **settings,
        }
        (folder / "armorm.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> ArmoRMScorer:
        from safetensors.torch import load_file

        from prefopt.models.loading import load_backbone, load_tokenizer

        folder = Path(folder)
        meta = json.loads((folder / "armorm.json").read_text())
        state = load_file(folder / "head.safetensors")
        d, k = meta["regression_shape"]
        probe = None
        if meta.get("regression", "ridge") == "mlp":
            probe = ObjectiveMLP(d, k, meta["regression_hidden"])
        head = ArmoRMHead(
            None if probe is not None else torch.zeros(d, k),
            lambdas=state["lambdas"],
            verbosity_index=int(state["verbosity_index"])
            if int(state["verbosity_index"]) >= 0
            else None,
            prompt_dim=meta["prompt_dim"],
            hidden_sizes=meta["gate_hidden"],
            dropout=meta["gate_dropout"],
            temperature=meta["temperature"],
            regression=probe,
        )
        head.load_state_dict(state)
        backbone = load_backbone(str(folder / "backbone"))
        tokenizer = load_tokenizer(str(folder / "backbone"))
        features = FeatureExtractor(
            backbone,
            tokenizer,
            meta["pooling"],
            torch.device(device),
            meta["max_length"],
            meta["max_prompt_length"],
        )
        return cls(features, head, meta["objective_names"])


def settings_of(config: ArmoRMConfig, prompt_dim: int) -> dict[str, Any]:
    keep = (
        "gate_hidden",
        "gate_dropout",
        "temperature",
        "max_length",
        "max_prompt_length",
        "regression",
        "regression_hidden",
    )
    return {k: v for k, v in asdict(config).items() if k in keep} | {"prompt_dim": prompt_dim}
