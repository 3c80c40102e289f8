import numpy as np
import pytest

from eager_local.sampling import SamplingParams, sample_rows, sequence_rng


def test_greedy_at_temperature_zero():
    logits = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 2.0]], dtype=np.float32)
    out = sample_rows(logits, np.array([0.99, 0.01]), SamplingParams(temperature=0))
    assert out.tolist() == [1, 0]


def test_inverse_cdf_follows_the_softmax():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    params = SamplingParams(temperature=1.0)
    # The cdf is [0.5, 0.8, 1.0]: draws below 0.5 give token 0, then 1, then 2.
    assert [int(sample_rows(logits, np.array([u]), params)[0]) for u in (0.1, 0.49, 0.51, 0.79, 0.81, 0.999)] == [0, 0, 1, 1, 2, 2]


def test_empirical_frequencies_at_temperature():
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    logits = np.tile(np.log(probs).astype(np.float32), (20000, 1))
    rng = np.random.default_rng(1)
    out = sample_rows(logits, rng.random(20000), SamplingParams(temperature=0.5))
    tempered = probs ** 2 / (probs ** 2).sum()
    freq = np.bincount(out, minlength=4) / 20000
    np.testing.assert_allclose(freq, tempered, atol=0.01)


def test_top_k_and_top_p_truncate():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    u = np.array([0.999])
    assert sample_rows(logits, u, SamplingParams(temperature=1, top_k=2))[0] == 1
    assert sample_rows(logits, u, SamplingParams(temperature=1, top_p=0.7))[0] == 1
    assert sample_rows(logits, u, SamplingParams(temperature=1, top_p=0.85))[0] == 2


def test_streams_are_seeded_per_sequence():
    a = sequence_rng(55, 3, 7).random(4)
    b = sequence_rng(55, 3, 7).random(4)
    c = sequence_rng(55, 3, 8).random(4)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(min_p=1.0), dict(top_k=-2)])
def test_validation(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()
