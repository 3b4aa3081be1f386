import numpy as np

from service.postprocess import softmax, top_k


def test_softmax_is_stable_for_large_logits_and_sums_to_one():
    p = softmax(np.array([1000.0, 1000.0, -1000.0], dtype=np.float32))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0], atol=1e-12)


def test_top_k_orders_by_probability_then_index():
    logits = np.array([0.0, 2.0, 1.0, 2.0, -1.0], dtype=np.float32)
    result = top_k(logits, ["a", "b", "c", "d", "e"], 3)
    assert [r["label"] for r in result] == ["b", "d", "c"]
    assert result[0]["index"] == 1 and abs(sum(softmax(logits)) - 1) < 1e-12
    assert len(top_k(logits, list("abcde"), 99)) == 5
