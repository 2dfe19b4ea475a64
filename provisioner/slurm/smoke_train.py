"""The training smoke job's program (runs on the nodes under ``srun torchrun``; needs
only torch): a tiny causal transformer trained data-parallel on generated sequences.

Every rank prints one line ``GPUCTL_SMOKE {json}`` with its first and last loss and a
SHA-256 of its final weights. DDP averages gradients with an all-reduce whose result is
the same on every rank, so after the last step every rank must hold bit-identical
weights: a rank whose checksum differs computed or communicated something wrong.
"""

import hashlib
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

VOCAB, DIM, HEADS, LAYERS, SEQ, BATCH = 64, 64, 4, 2, 32, 16


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.zeros(SEQ, DIM))
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 4 * DIM, dropout=0.0,
                                           batch_first=True)
        self.body = nn.TransformerEncoder(layer, LAYERS)
        self.head = nn.Linear(DIM, VOCAB)
        self.mask = nn.Transformer.generate_square_subsequent_mask(SEQ)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        n = x.shape[1]
        mask = self.mask[:n, :n].to(x.device)
        out: torch.Tensor = self.head(self.body(h, mask=mask, is_causal=True))
        return out


def batch(gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Sequences with a learnable rule: x[t+1] = (3 * x[t] + 1) mod VOCAB."""
    start = torch.randint(0, VOCAB, (BATCH, 1), generator=gen)
    seq = [start]
    for _ in range(SEQ - 1):
        seq.append((3 * seq[-1] + 1) % VOCAB)
    return torch.cat(seq, dim=1).to(device)


def main(steps: int) -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = TinyLM().to(device)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[local] if cuda else None)
    opt = torch.optim.AdamW(ddp.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    losses = []
    started = time.monotonic()
    for _ in range(steps):
        x = batch(gen, device)
        logits = ddp(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    digest = hashlib.sha256()
    for p in model.parameters():
        # The weights' bits (no numpy needed): float32 viewed as int32.
        bits = p.detach().float().cpu().contiguous().view(torch.int32).flatten().tolist()
        digest.update(repr(bits).encode())
    window = max(1, min(10, steps // 10))
    print("GPUCTL_SMOKE " + json.dumps({
        "rank": rank, "world": world, "host": socket.gethostname(),
        "device": str(torch.cuda.get_device_name(device)) if cuda else "cpu",
        "backend": dist.get_backend(), "steps": steps,
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "checksum": digest.hexdigest(), "seconds": round(time.monotonic() - started, 2),
    }), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
