"""PrefixEncoder: the trainable prefix, a flat embedding or an embedding + Linear-Tanh-Linear MLP.

Li & Liang (2021), section 4.3: training the prefix directly is unstable, so it is reparameterised
by a small MLP over a smaller embedding; after training only the MLP's output (the prefix) is kept.
Same modules, parameter names, initialisation and saved tensor as PEFT's PrefixEncoder.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import (  # noqa: F401 (prefix_parameter_counts: importable here, as before)
    SAVED_KEY,
    PrefixTuningConfig,
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
