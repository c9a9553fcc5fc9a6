"""A tiny Megatron model, loss and batch stream for the trainer/checkpoint tests (real Megatron layers).

Uniquely named so `import` cannot pick up another folder's conftest."""
import warnings

import torch

warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")


def build_tiny(seed=0, dim=8, hidden=32, dropout=0.1):
    """Column -> gelu -> dropout -> Row, initialised from `seed` (via the Megatron RNG tracker)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, model_parallel_cuda_manual_seed
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.module import MegatronModule

    class Tiny(MegatronModule):
        def __init__(self, config):
            super().__init__(config)
            self.fc1 = ColumnParallelLinear(dim, hidden, config=config, init_method=config.init_method,
                                            bias=True, gather_output=False)
            self.fc2 = RowParallelLinear(hidden, dim, config=config, init_method=config.output_layer_init_method,
                                         bias=True, input_is_parallel=True, skip_bias_add=False)
            self.drop = torch.nn.Dropout(dropout)

        def forward(self, x, batch=None):
            h, _ = self.fc1(x)
            y, _ = self.fc2(self.drop(torch.nn.functional.gelu(h)))
            return y

        def flops_per_step(self, batch):
            return 6.0 * batch.shape[0] * (dim * hidden * 2)

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    cfg = TransformerConfig(num_layers=1, hidden_size=dim, num_attention_heads=1, params_dtype=torch.float32)
    return Tiny(cfg)


class TinyStream:
    """Deterministic batches [n, 1, dim] from a position counter: the `PackedStream` interface."""

    def __init__(self, dim=8, n=16, seed=123):
        self.dim, self.n, self.seed, self.pos = dim, n, seed, 0

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.pos)
        self.pos += 1
        return torch.randn(self.n, 1, self.dim, generator=g)

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = int(state["pos"])


def tiny_loss(model, batch, gen):
    """Denoising loss: noise from the trainer's generator, so its state matters on resume."""
    noise = torch.randn(batch.shape, generator=gen)
    pred = model(batch + 0.5 * noise)
    loss = (pred - batch).pow(2).mean()
    return loss, {"loss": loss.detach(), "tokens": batch.shape[0]}
