"""route (one Triton kernel) against torch: top-k then softmax over the k."""

import pytest
import torch

from gptoss_kernels import route, route_reference


def _stable_topk(logits, k):
    """Reference tie order: lowest index first (a stable descending sort)."""
    order = torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices[:, :k]
    vals = torch.gather(logits.float(), 1, order)
    return torch.softmax(vals, dim=-1), order.to(torch.int32)


@pytest.mark.parametrize("T,E,k", [(1, 4, 1), (3, 32, 4), (17, 128, 4), (64, 8, 2), (257, 32, 4), (5, 24, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_route_matches_topk_softmax(device, T, E, k, dtype):
    logits = (torch.randn(T, E) * 3).to(dtype).to(device)
    w, ids = route(logits, k)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and w.shape == ids.shape == (T, k)
    ref_w, ref_ids = _stable_topk(logits.cpu(), k)
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(w.cpu(), ref_w, rtol=1e-6, atol=1e-6)
    # same selected values as torch.topk (which may order ties differently on the CPU)
    tv, _ = torch.topk(logits.cpu().float(), k)
    torch.testing.assert_close(torch.gather(logits.cpu().float(), 1, ids.cpu().long()), tv, rtol=0, atol=0)
    if dtype == torch.float32:  # continuous values: no ties, so torch.topk's order is the only one
        rw, rids = route_reference(logits.cpu(), k)
        assert torch.equal(ids.cpu(), rids)
        torch.testing.assert_close(w.cpu(), rw, rtol=1e-6, atol=1e-6)


def test_route_ties_go_to_lowest_index(device):
    logits = torch.randint(-2, 3, (33, 16)).float().to(device)  # many ties
    w, ids = route(logits, 4)
    ref_w, ref_ids = _stable_topk(logits.cpu(), 4)
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(w.cpu(), ref_w, rtol=1e-6, atol=1e-6)


def test_route_non_contiguous_rows(device):
    base = torch.randn(9, 40).to(device)
    logits = base[:, :32]
    w, ids = route(logits, 4)
    rw, rids = route_reference(logits.cpu(), 4)
    assert torch.equal(ids.cpu(), rids)
    torch.testing.assert_close(w.cpu(), rw, rtol=1e-6, atol=1e-6)


def test_route_rejects_bad_k(device):
    with pytest.raises(ValueError, match="top_k"):
        route(torch.randn(2, 4).to(device), 5)
