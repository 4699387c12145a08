from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from flagstone.models.heads import apply_heads, pool, sparse_vocab_weights  # noqa: E402


def test_heads_zero_padding_and_special_tokens_and_keep_the_largest_repeat():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    input_ids = torch.tensor([[0, 7, 9, 7, 2], [0, 9, 2, 1, 1]])  # 0, 2: specials; 1: padding
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    sparse, colbert = torch.nn.Linear(8, 1), torch.nn.Linear(8, 4)
    with torch.no_grad():
        sparse.weight.fill_(0.0)
        sparse.bias.fill_(1.0)
        sparse.weight[0, 0] = 1.0  # weight = relu(1 + hidden[..., 0])
    out = apply_heads(hidden, mask, input_ids, pooling="mean", normalize=True, sparse_head=sparse,
                      colbert_head=colbert, special_ids=torch.tensor([0, 1, 2]))
    expected = torch.relu(1 + hidden[..., 0])
    assert torch.equal(out.sparse[0], torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]) * expected[0])
    assert torch.all(out.sparse[1, 2:] == 0) and out.sparse[1, 1] == expected[1, 1]
    vocab = sparse_vocab_weights(out.sparse, input_ids, 10)
    assert vocab[0, 7] == torch.maximum(expected[0, 1], expected[0, 3])
    assert vocab[0, 0] == 0 and vocab[1, 1] == 0
    assert out.colbert.shape == (2, 4, 4) and torch.equal(out.colbert_mask, mask[:, 1:])
    assert torch.all(out.colbert[1, 2:] == 0)
    torch.testing.assert_close(out.colbert[0].norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.dense, pool(hidden, mask, "mean", True))


def test_pooling_modes():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "cls", False), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "last_token", False), torch.stack([hidden[0, 2], hidden[1, 1]]))
    assert torch.allclose(pool(hidden, mask, "mean", False)[1], hidden[1, :2].mean(0))
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, mask, "max", False)
    with pytest.raises(ValueError, match="special_ids"):
        apply_heads(hidden, mask, mask, pooling="cls", normalize=False, sparse_head=torch.nn.Linear(4, 1))


def test_last_token_pooling_with_left_padding():
    hidden = torch.randn(2, 4, 3)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # decoder embedders pad on the left
    assert torch.equal(pool(hidden, left, "last_token", False), hidden[:, -1])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, right, "last_token", False), torch.stack([hidden[0, 1], hidden[1, 3]]))
