"""IDS vs MLE on a K-armed Bradley-Terry bandit with long-tailed comparison counts.

Zhu, Jordan & Jiao (2024), arXiv 2401.16335 (ALGORITHMS.md section 6): with long-tailed
comparison counts, maximum likelihood drives the reward gap of a rarely compared arm to
infinity as training goes on (the test cross-entropy rises after the first epochs), while
Iterative Data Smoothing keeps rarely compared arms near their initialisation.

Setting (the paper's exact values are unverified; these defaults make the effect visible in a
few seconds, see ``docs/algorithms/ids.md``):

* ``arms`` = 40 arms with true rewards ``r*_a ~ N(0, reward_std^2)``, ``reward_std`` = 1.
* Training data: ``comparisons`` = 500 comparisons. Arm a has popularity
  ``w_a ~ (a + 1) ** -zipf_exponent`` (``zipf_exponent`` = 1.5) and each comparison draws its
  two arms independently from ``w`` (redrawing the second while it equals the first), so the
  counts are long-tailed: a few pairs among the head arms are compared a hundred times, most
  distinct pairs once, and several tail arms appear in one or two comparisons (or none).
  Labels ``y = 1`` (first arm preferred) with probability ``sig(r*_i - r*_j)``.
* Model: a reward vector ``theta in R^K`` initialised at 0, trained by minibatch SGD (batch
  ``batch_size`` = 16, ``lr`` = 1.0 on the batch-mean loss, reshuffled each epoch) for
  ``epochs`` = 60 epochs on the cross-entropy with (a) the hard labels (MLE) and (b) IDS soft
  labels, updated after every epoch on all comparisons with the updated model,
  ``y <- (1 - beta) y + beta sig(delta)``, ``beta`` = 0.1
  (:class:`prefopt.rewards.ids.SoftLabelStore`). Both runs see the same minibatch order. The
  SGD step uses the analytic gradient of :func:`prefopt.rewards.ids.soft_label_loss`,
  ``d L / d delta = sig(delta) - y``, so that a run takes seconds rather than minutes.
* Test distribution: ``test_comparisons`` = 20,000 fresh comparisons drawn from the true BTL
  model on arm pairs drawn *uniformly* over all ordered pairs of distinct arms (not the
  long-tailed training distribution): a policy optimised against the learned reward can pick
  any arm, so every pair matters equally. Reported: the mean cross-entropy of the learned
  rewards on them, the training cross-entropy with the hard labels, whether the arm with the
  highest learned reward is the truly best arm, and its regret ``max r* - r*[argmax theta]``.

Run ``python -m prefopt.experiments.ids_bandit [--arms K] [--epochs E] [--seed S] [--out DIR]``;
it prints a table per epoch and writes ``ids_bandit.csv`` and ``ids_bandit.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefopt.rewards.ids import SoftLabelStore, soft_label_loss

__all__ = ["main", "run_bandit"]

CSV_COLUMNS = (
    "epoch",
    "mle_test_ce",
    "ids_test_ce",
    "mle_train_ce",
    "ids_train_ce",
    "mle_best_arm_correct",
    "ids_best_arm_correct",
    "mle_regret",
    "ids_regret",
)


def _draw_pairs(weights: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` pairs of distinct arms, each arm drawn independently from ``weights``."""
    first = torch.multinomial(weights, count, replacement=True, generator=generator)
    second = torch.multinomial(weights, count, replacement=True, generator=generator)
    same = first == second
    while bool(same.any()):
        redraw = torch.multinomial(weights, int(same.sum()), replacement=True, generator=generator)
        second[same] = redraw
        same = first == second
    return first, second


def _btl_labels(rewards: Tensor, first: Tensor, second: Tensor, generator: torch.Generator):
    return torch.bernoulli(torch.sigmoid(rewards[first] - rewards[second]), generator=generator)


def run_bandit(
    arms: int = 40,
    comparisons: int = 500,
    zipf_exponent: float = 1.5,
    reward_std: float = 1.0,
    lr: float = 1.0,
    batch_size: int = 16,
    epochs: int = 60,
    beta: float = 0.1,
    test_comparisons: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Train MLE and IDS reward vectors on the same bandit data; per-epoch metrics.

    Returns a dict with the per-epoch lists named in ``CSV_COLUMNS`` (``epoch`` counts from 1),
    ``true_rewards``, ``mle_rewards`` and ``ids_rewards`` (final, lists of K floats),
    ``data`` (a summary of the comparison counts) and ``config`` (the arguments).
    """
    if arms < 2 or comparisons < 1 or epochs < 1 or batch_size < 1:
        raise ValueError("need arms >= 2 and comparisons, epochs, batch_size >= 1")
    config = dict(locals())
    with _single_threaded():
        return _simulate(**config)


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Every op of the simulation is on a few dozen numbers: intra-op threads only add
    synchronisation (10x slower on a busy 2-core machine). Restores the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _simulate(
    arms: int,
    comparisons: int,
    zipf_exponent: float,
    reward_std: float,
    lr: float,
    batch_size: int,
    epochs: int,
    beta: float,
    test_comparisons: int,
    seed: int,
) -> dict[str, Any]:
    config = dict(locals())
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.float64

    true_rewards = torch.randn(arms, generator=generator, dtype=dtype) * reward_std
    popularity = (torch.arange(arms, dtype=dtype) + 1.0) ** (-zipf_exponent)
    first, second = _draw_pairs(popularity / popularity.sum(), comparisons, generator)
    hard_labels = _btl_labels(true_rewards, first, second, generator)

    uniform = torch.ones(arms, dtype=dtype)
    test_first, test_second = _draw_pairs(uniform, test_comparisons, generator)
    test_labels = _btl_labels(true_rewards, test_first, test_second, generator)

    store = SoftLabelStore(hard_labels, dtype=dtype)
    every_example = torch.arange(comparisons)
    theta = torch.zeros(2, arms, dtype=dtype)  # row 0: MLE, row 1: IDS
    true_best = int(true_rewards.argmax())

    history: dict[str, list[float]] = {name: [] for name in CSV_COLUMNS}
    for epoch in range(1, epochs + 1):
        labels = torch.stack([hard_labels, store.labels])  # [2, M]; labels fixed within epoch
        order = torch.randperm(comparisons, generator=generator)
        for start in range(0, comparisons, batch_size):
            batch = order[start : start + batch_size]
            i, j = first[batch], second[batch]
            deltas = theta[:, i] - theta[:, j]
            # d/d delta of soft_label_loss, averaged over the batch: (sig(delta) - y) / B
            grad = (torch.sigmoid(deltas) - labels[:, batch]) / len(batch)
            theta.index_add_(1, i, -lr * grad)
            theta.index_add_(1, j, lr * grad)
        store.update(every_example, theta[1, first] - theta[1, second], beta)

        test_ce = soft_label_loss(
            theta[:, test_first] - theta[:, test_second], test_labels.expand(2, -1)
        ).mean(dim=1)
        train_ce = soft_label_loss(
            theta[:, first] - theta[:, second], hard_labels.expand(2, -1)
        ).mean(dim=1)
        picked = theta.argmax(dim=1)
        regret = true_rewards[true_best] - true_rewards[picked]
        row = {
            "epoch": epoch,
            "mle_test_ce": float(test_ce[0]),
            "ids_test_ce": float(test_ce[1]),
            "mle_train_ce": float(train_ce[0]),
            "ids_train_ce": float(train_ce[1]),
            "mle_best_arm_correct": int(picked[0]) == true_best,
            "ids_best_arm_correct": int(picked[1]) == true_best,
            "mle_regret": float(regret[0]),
            "ids_regret": float(regret[1]),
        }
        for name in CSV_COLUMNS:
            history[name].append(row[name])

    pair_keys = torch.minimum(first, second) * arms + torch.maximum(first, second)
    pair_counts = torch.unique(pair_keys, return_counts=True)[1]
    arm_counts = torch.bincount(torch.cat([first, second]), minlength=arms)
    return {
        **history,
        "true_rewards": true_rewards.tolist(),
        "mle_rewards": theta[0].tolist(),
        "ids_rewards": theta[1].tolist(),
        "true_best_arm": true_best,
        "data": {
            "distinct_pairs": int(pair_counts.numel()),
            "pairs_compared_once": int((pair_counts == 1).sum()),
            "max_pair_count": int(pair_counts.max()),
            "arms_in_at_most_two_comparisons": int((arm_counts <= 2).sum()),
            "arms_never_compared": int((arm_counts == 0).sum()),
        },
        "config": config,
    }


def write_csv(result: dict[str, Any], path: str | Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for values in zip(*(result[name] for name in CSV_COLUMNS), strict=True):
            writer.writerow([repr(v) if isinstance(v, float) else v for v in values])


def plot(result: dict[str, Any], path: str | Path) -> None:
    from matplotlib.figure import Figure  # object API: no global pyplot/backend state

    epochs = result["epoch"]
    fig = Figure(figsize=(9.0, 3.5), dpi=120)
    ce_axis, regret_axis = fig.subplots(1, 2)
    for method, color in (("mle", "tab:red"), ("ids", "tab:blue")):
        label = method.upper()
        ce_axis.plot(epochs, result[f"{method}_test_ce"], color=color, label=f"{label} test")
        ce_axis.plot(
            epochs, result[f"{method}_train_ce"], color=color, ls="--", label=f"{label} train"
        )
        regret_axis.plot(epochs, result[f"{method}_regret"], color=color, label=label)
    ce_axis.set_xlabel("epoch")
    ce_axis.set_ylabel("cross-entropy")
    ce_axis.set_title("test: uniform pairs, fresh BTL labels")
    ce_axis.legend(fontsize=8)
    regret_axis.set_xlabel("epoch")
    regret_axis.set_ylabel("max r* - r*[argmax theta]")
    regret_axis.set_title("regret of the learned best arm")
    regret_axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def format_table(result: dict[str, Any]) -> str:
    header = (
        f"{'epoch':>5}  {'MLE test CE':>11}  {'IDS test CE':>11}  {'MLE best':>8}  "
        f"{'IDS best':>8}  {'MLE regret':>10}  {'IDS regret':>10}"
    )
    lines = [header]
    for epoch, mle, ids, mle_ok, ids_ok, mle_regret, ids_regret in zip(
        result["epoch"],
        result["mle_test_ce"],
        result["ids_test_ce"],
        result["mle_best_arm_correct"],
        result["ids_best_arm_correct"],
        result["mle_regret"],
        result["ids_regret"],
        strict=True,
    ):
        lines.append(
            f"{epoch:>5}  {mle:>11.4f}  {ids:>11.4f}  {mle_ok!s:>8}  {ids_ok!s:>8}  "
            f"{mle_regret:>10.3f}  {ids_regret:>10.3f}"
        )
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> str:
    out = []
    for method in ("mle", "ids"):
        curve = result[f"{method}_test_ce"]
        best = min(curve)
        out.append(
            f"{method.upper()}: min test CE {best:.4f} at epoch {curve.index(best) + 1}, "
            f"final {curve[-1]:.4f} (final - min = {curve[-1] - best:+.4f}), "
            f"final regret {result[f'{method}_regret'][-1]:.3f}"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m prefopt.experiments.ids_bandit",
        description="IDS vs MLE on a Bradley-Terry bandit with long-tailed comparison counts "
        "(Zhu, Jordan & Jiao 2024, arXiv 2401.16335).",
    )
    parser.add_argument("--arms", type=int, default=40, help="number of arms K")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/ids_bandit"))
    parser.add_argument("--comparisons", type=int, default=500, help="training comparisons")
    parser.add_argument("--zipf-exponent", type=float, default=1.5, help="arm popularity decay")
    parser.add_argument("--beta", type=float, default=0.1, help="IDS label step size")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    result = run_bandit(
        arms=args.arms,
        comparisons=args.comparisons,
        zipf_exponent=args.zipf_exponent,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        beta=args.beta,
        seed=args.seed,
    )
    data = result["data"]
    print(
        f"{args.arms} arms, {args.comparisons} comparisons over {data['distinct_pairs']} distinct "
        f"pairs ({data['pairs_compared_once']} compared once, the most {data['max_pair_count']} "
        f"times); {data['arms_in_at_most_two_comparisons']} arms in <= 2 comparisons, "
        f"{data['arms_never_compared']} never compared; true best arm {result['true_best_arm']}"
    )
    print(format_table(result))
    print(summary(result))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(result, args.out / "ids_bandit.csv")
    plot(result, args.out / "ids_bandit.png")
    print(f"wrote {args.out / 'ids_bandit.csv'} and {args.out / 'ids_bandit.png'}")
    return result


if __name__ == "__main__":
    main()
