"""IDS (Zhu, Jordan & Jiao 2024, arXiv 2401.16335): soft-label loss, label update, store, bandit.

Hand values used below:
  logsig(2)  = -log(1 + e^-2) = -0.126928011,  logsig(-2) = logsig(2) - 2 = -2.126928011
  logsig(1)  = -log(1 + e^-1) = -0.313261688,  logsig(0) = -log 2 = -0.693147181
  sig(log 3) = 3/4,  sig(-log 3) = 1/4
"""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.experiments.ids_bandit import CSV_COLUMNS, main, run_bandit
from prefopt.rewards.ids import SoftLabelStore, soft_label_loss, update_soft_labels

LOG3 = math.log(3.0)


def test_soft_label_loss_hand_values():
    """delta=0, y=1: log 2 = 0.693147181
    delta=2, y=0.75: 0.75 * 0.126928011 + 0.25 * 2.126928011 = 0.626928011
    delta=-1, y=0: -logsig(1) = 0.313261688
    """
    deltas = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.75, 0.0], dtype=torch.float64)
    expected = torch.tensor([0.693147181, 0.626928011, 0.313261688], dtype=torch.float64)
    assert_close(soft_label_loss(deltas, labels), expected, rtol=0, atol=1e-9)


def test_soft_label_loss_is_finite_for_large_gaps():
    """-logsig(-100) = 100 + log(1 + e^-100) = 100 to double precision; no inf/NaN."""
    loss = soft_label_loss(torch.tensor([100.0, -100.0]), torch.tensor([0.0, 1.0]))
    assert_close(loss, torch.tensor([100.0, 100.0]))


def test_soft_label_loss_with_hard_labels_is_bradley_terry():
    deltas = torch.linspace(-3, 3, 7)
    assert_close(soft_label_loss(deltas, torch.ones(7)), -torch.nn.functional.logsigmoid(deltas))


def test_analytic_gradient_used_by_the_bandit_matches_autograd():
    """ids_bandit steps with d L / d delta = sig(delta) - y; check it against autograd."""
    deltas = torch.tensor([-2.0, 0.3, 1.5], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1.0, 0.2, 0.9], dtype=torch.float64)
    soft_label_loss(deltas, labels).sum().backward()
    assert_close(deltas.grad, torch.sigmoid(deltas.detach()) - labels)


def test_update_soft_labels_hand_values():
    """beta = 0.2: 0.8*1 + 0.2*0.5 = 0.9; 0.8*0 + 0.2*0.75 = 0.15; 0.8*0.5 + 0.2*0.25 = 0.45."""
    labels = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    deltas = torch.tensor([0.0, LOG3, -LOG3], dtype=torch.float64)
    new = update_soft_labels(labels, deltas, beta=0.2)
    assert_close(new, torch.tensor([0.9, 0.15, 0.45], dtype=torch.float64))
    assert_close(labels, torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))  # not in place
    assert_close(update_soft_labels(labels, deltas, beta=0.0), labels)
    with pytest.raises(ValueError, match="beta"):
        update_soft_labels(labels, deltas, beta=1.5)


def test_update_soft_labels_does_not_track_gradients():
    deltas = torch.tensor([0.5], requires_grad=True)
    assert not update_soft_labels(torch.ones(1), deltas, 0.1).requires_grad


def test_store_get_and_update_by_index():
    """Hard labels [1, 0, 1, 1]; update examples [2, 0] with deltas [0, log 3], beta 0.5:
    y_2 = 0.5*1 + 0.5*0.5 = 0.75, y_0 = 0.5*1 + 0.5*0.75 = 0.875; examples 1, 3 untouched."""
    store = SoftLabelStore([1.0, 0.0, 1.0, 1.0])
    store.update(torch.tensor([2, 0]), torch.tensor([0.0, LOG3]), beta=0.5)
    assert_close(store.get(torch.tensor([0, 1, 2, 3])), torch.tensor([0.875, 0.0, 0.75, 1.0]))
    assert_close(store.get(torch.tensor([2])), torch.tensor([0.75]))
    assert len(store) == 4


def test_store_state_dict_round_trip():
    store = SoftLabelStore.all_first_preferred(5)
    store.update(torch.tensor([1, 3]), torch.tensor([-1.0, 2.0]), beta=0.3)
    state = store.state_dict()
    resumed = SoftLabelStore.all_first_preferred(5)
    assert not torch.equal(resumed.labels, store.labels)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.labels, store.labels)
    state["labels"].fill_(0.0)  # the checkpoint is a copy, not a view of the live labels
    assert torch.equal(resumed.labels, store.labels)
    # resuming continues exactly as the uninterrupted store would
    store.update(torch.tensor([0]), torch.tensor([0.7]), beta=0.3)
    resumed.update(torch.tensor([0]), torch.tensor([0.7]), beta=0.3)
    assert torch.equal(resumed.labels, store.labels)
    with pytest.raises(ValueError, match="shape"):
        SoftLabelStore.all_first_preferred(4).load_state_dict(store.state_dict())


def test_store_rejects_labels_outside_unit_interval():
    with pytest.raises(ValueError):
        SoftLabelStore([1.0, 2.0])


def test_bandit_with_beta_zero_ids_is_mle():
    result = run_bandit(arms=10, comparisons=100, epochs=5, beta=0.0, test_comparisons=500)
    assert result["ids_test_ce"] == result["mle_test_ce"]
    assert result["ids_rewards"] == result["mle_rewards"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bandit_defaults_show_mle_overfitting_and_ids_not(seed):
    """The paper's claim with the default setting: MLE's test CE rises well above its minimum
    over epochs, IDS's stays at its minimum, and IDS ends below MLE."""
    result = run_bandit(seed=seed)
    mle, ids = result["mle_test_ce"], result["ids_test_ce"]
    assert len(mle) == len(ids) == 60
    assert mle[-1] - min(mle) > 0.05
    assert ids[-1] - min(ids) < 0.01
    assert ids[-1] < mle[-1] - 0.05
    # the mechanism: MLE keeps lowering the training CE (overfitting), IDS's levels off
    assert result["mle_train_ce"][-1] < result["ids_train_ce"][-1]
    assert result["data"]["pairs_compared_once"] > result["data"]["distinct_pairs"] / 3


def test_bandit_cli_writes_csv_and_png(tmp_path, capsys):
    main(["--arms", "8", "--epochs", "3", "--seed", "1", "--out", str(tmp_path)])
    lines = (tmp_path / "ids_bandit.csv").read_text().splitlines()
    assert lines[0].split(",") == list(CSV_COLUMNS)
    assert len(lines) == 1 + 3
    assert (tmp_path / "ids_bandit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "MLE test CE" in out and "IDS test CE" in out
