"""PrefixEncoder: the trainable prefix, a flat embedding or an embedding + Linear-Tanh-Linear MLP.

Li & Liang (2021), section 4.3: training the prefix directly is unstable, so it is reparameterised
by a small MLP over a smaller embedding; after training only the MLP's output (the prefix) is kept.
Same modules, parameter names, initialisation and saved tensor as PEFT's PrefixEncoder.

PaperPrefixEncoder: the paper's encoder-decoder layout (section 4.2, prefix_positions='paper'), one
PrefixEncoder per attention position, each with its own embedding and MLP as in the paper's code.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import (  # noqa: F401 (prefix_parameter_counts: importable here, as before)
    SAVED_KEY,
    PrefixTuningConfig,
    paper_position_configs,
    prefix_width,
    require_filled,
    prefix_parameter_counts,
    uses_projection,
)


class PrefixEncoder(nn.Module):
    """The prefix as a function of nothing: `prefix_states()` -> (num_virtual_tokens, num_layers*2*token_dim).

    Without projection: `embedding` (num_virtual_tokens, num_layers*2*token_dim) is the prefix.
    With projection: `embedding` (num_virtual_tokens, token_dim) -> Linear(token_dim, encoder_hidden_size)
    -> Tanh -> Linear(encoder_hidden_size, num_layers*2*token_dim).

    `forward(prefix)` keeps PEFT's interface: token indices (..., num_virtual_tokens) ->
    (..., num_virtual_tokens, num_layers*2*token_dim).
    """

    def __init__(self, config: PrefixTuningConfig):
        super().__init__()
        require_filled(config)
        self.prefix_projection = uses_projection(config)
        n, d, out = config.num_virtual_tokens, config.token_dim, prefix_width(config)
        if self.prefix_projection:
            hidden = config.encoder_hidden_size or d  # PEFT falls back to token_dim
            self.embedding = nn.Embedding(n, d)
            self.transform = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, out))
            if config.init_weights == "zero":
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            self.embedding = nn.Embedding(n, out)
            if config.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        """(..., n) indices -> (..., n, num_layers*2*token_dim)."""
        tokens = self.embedding(prefix)
        return self.transform(tokens) if self.prefix_projection else tokens

    def prefix_states(self) -> torch.Tensor:
        """The whole prefix once, (num_virtual_tokens, num_layers*2*token_dim).

        Reads the embedding table directly instead of looking up arange(n): same values and
        gradients, without a gather forward and a scatter-add backward.
        """
        weight = self.embedding.weight  # (n, token_dim) or (n, out)
        return self.transform(weight) if self.prefix_projection else weight

    def load_prompt_embeddings(self, prompt_embeddings: torch.Tensor) -> None:
        """Load PEFT's saved `prompt_embeddings` (n, num_layers*2*token_dim) into a flat encoder."""
        if self.prefix_projection:
            raise ValueError(
                "cannot load a saved prefix into an encoder with prefix_projection=True: the file holds the "
                "projected prefix, not the MLP; load the adapter with is_trainable=False (inference_mode=True)"
            )
        if tuple(prompt_embeddings.shape) != tuple(self.embedding.weight.shape):
            raise ValueError(
                f"{SAVED_KEY} has shape {tuple(prompt_embeddings.shape)}, this encoder expects "
                f"{tuple(self.embedding.weight.shape)}; the adapter was saved for another base model shape"
            )
        with torch.no_grad():
            self.embedding.weight.copy_(prompt_embeddings.to(self.embedding.weight))

    @torch.no_grad()
    def set_prefix_states(self, states: torch.Tensor) -> float:
        """Make `prefix_states()` equal `states` (num_virtual_tokens, num_layers*2*token_dim); returns the
        largest absolute difference left (0 without projection).

        Without projection the embedding is the prefix: copied. With projection the prefix is
        MLP(embedding), and the MLP's output layer is solved for it: given its input rows
        h_i = tanh(W1 e_i + b1) (embedding and first layer as initialised), W2 and b2 are the
        minimum-norm least-squares solution of [h_i, 1] [W2^T; b2] = states_i, in float64. That is
        exact when the n rows [h_i, 1] are linearly independent (distinct embedding rows and
        n <= encoder_hidden_size + 1; the random embedding makes them so), else the best fit. The
        paper's code fits the MLP to the activations too (regression, 500 Adam steps); the closed
        form is exact and takes no steps.
        """
        target = states.to(self.embedding.weight.device, torch.float64)
        if tuple(target.shape) != (self.embedding.weight.shape[0], self._width()):
            raise ValueError(f"prefix states of shape {tuple(states.shape)} do not fit this encoder "
                             f"({self.embedding.weight.shape[0]}, {self._width()})")
        if not self.prefix_projection:
            self.embedding.weight.copy_(target.to(self.embedding.weight.dtype))
            return 0.0
        first, last = self.transform[0], self.transform[-1]
        hidden = torch.tanh(self.embedding.weight.double() @ first.weight.double().T + first.bias.double())  # (n, h)
        rows = torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=1)  # (n, h + 1)
        solution = torch.linalg.pinv(rows) @ target  # (h + 1, out)
        last.weight.copy_(solution[:-1].T.to(last.weight.dtype))  # (out, h)
        last.bias.copy_(solution[-1].to(last.bias.dtype))
        return (self.prefix_states().double() - target).abs().max().item()

    def _width(self) -> int:
        return self.transform[-1].out_features if self.prefix_projection else self.embedding.weight.shape[1]


class PaperPrefixEncoder(nn.ModuleDict):
    """prefix_positions='paper': a PrefixEncoder for each of PAPER_POSITIONS (encoder self-attention,
    decoder self-attention, decoder cross-attention), with the sizes of `paper_position_configs`.
    Parameter names: `<position>.embedding.weight`, `<position>.transform.*`. Every position has its
    own embedding and MLP (of hidden size encoder_hidden_size), as in the paper's code (wte / wte_enc
    / wte2 and their control_trans MLPs)."""

    def __init__(self, config: PrefixTuningConfig):
        configs = paper_position_configs(config)
        super().__init__({position: PrefixEncoder(c) for position, c in configs.items()})
        self.position_configs = configs
        self.prefix_projection = uses_projection(config)

    def position_states(self) -> dict[str, torch.Tensor]:
        """Each position's prefix once: position -> (num_virtual_tokens, its num_layers*2*token_dim)."""
        return {position: encoder.prefix_states() for position, encoder in self.items()}

    def prefix_states(self) -> torch.Tensor:
        """The three positions side by side, (num_virtual_tokens, total width): what the adapter stores."""
        return torch.cat(list(self.position_states().values()), dim=1)
