"""Neuron selection: smallest prefix reaching the threshold, all neurons at 1.0, no crash."""
import pytest
import torch

from nse.neuron_selection import select_neurons


def _keys(scores):
    # one request; negative entries count by magnitude
    return torch.tensor(scores, dtype=torch.float32)[:, None]


def test_smallest_prefix_reaching_threshold():
    keys = _keys([1.0, -5.0, 3.0, 0.5, 0.5])  # |.| sorted: 5, 3, 1, .5, .5 ; total 10
    assert select_neurons(keys, 0.5).tolist() == [1]            # 5 reaches 5 exactly
    assert select_neurons(keys, 0.51).tolist() == [1, 2]        # needs 8 >= 5.1
    assert select_neurons(keys, 0.8).tolist() == [1, 2]         # 8 reaches 8 (original: one fewer)
    assert select_neurons(keys, 0.81).tolist() == [0, 1, 2]


def test_scores_sum_over_requests():
    keys = torch.tensor([[1.0, -1.0], [0.0, 3.0], [2.5, 0.0]])  # row sums of |.|: 2, 3, 2.5
    assert select_neurons(keys, 0.4).tolist() == [1]
    assert select_neurons(keys, 0.5).tolist() == [1, 2]


def test_threshold_one_keeps_every_neuron_despite_round_off():
    g = torch.Generator().manual_seed(0)
    keys = torch.rand(4096, 3, generator=g) * torch.logspace(-8, 4, 4096)[:, None]
    keys[7] = 0.0  # a silent neuron is still kept at 1.0
    chosen = select_neurons(keys, 1.0)
    assert chosen.tolist() == list(range(4096))


def test_dominant_neuron_does_not_crash():
    keys = _keys([0.001, 1000.0, 0.002])
    assert select_neurons(keys, 0.3).tolist() == [1]  # the original crashed here (empty prefix)


def test_all_zero_activations_select_everything():
    assert select_neurons(torch.zeros(5, 2), 0.5).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_threshold_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        select_neurons(torch.ones(3, 1), bad)
