"""Progressive Prompt Tokenization (PPT): prompt tokens learned from the image, for binary tasks, and, with
class conditioning, for each class of a multi-class model."""

from __future__ import annotations

import torch
from segment_anything.modeling.common import MLPBlock
from torch import nn

from segmote_monai.networks.two_way import few_query_attention

__all__ = ["ProgressivePromptTokenizer"]


class ProgressivePromptTokenizer(nn.Module):
    """Q learned queries attend to the normalised image tokens and become Q prompt tokens.

    ``a = MHA(q + c, LN(F) + PE, LN(F))``, ``h = q + c + a``, ``tokens = h + MLP(LN(h))``, where ``c`` is
    an optional foreground carrier per prompt (a pooled mask-prompt embedding or a learned class
    embedding). The model adds carriers with probability :attr:`carrier_probability`, which a trainer
    handler lowers to 0 over training, so that at inference PPT needs nothing but the image.

    **Class conditioning** (``num_condition_classes > 0``, beyond the paper, whose PPT is binary): a second
    learned class embedding ``e_k`` is added to the queries whenever a class ``k`` is asked for, in training and
    at inference: ``q + e_k`` makes the tokens that mean "class k on this image" (prompt-free, one row per class,
    empty where the class is absent) or, beside a box, "this box holds class k". It is kept apart from the
    carrier's class embedding, which training anneals away.

    **Positional values** (``positional_values=True``): the attention's values are ``LN(F) + PE`` as well as its
    keys, so that a token is a mixture of the positional encodings of the places it attends to (a soft point
    prompt, which is how SAM's decoder is told *where*), not only of their features. A token that must find an
    organ with no human prompt needs that; measured in BENCHMARKS.md (``automatic``).
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_queries: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        num_carrier_classes: int = 1,
        num_condition_classes: int = 0,
        positional_values: bool = False,
    ) -> None:
        super().__init__()
        for arg, value in (("embedding_dim", embedding_dim), ("num_queries", num_queries),
                           ("num_heads", num_heads), ("mlp_dim", mlp_dim),
                           ("num_carrier_classes", num_carrier_classes)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}")
        if not isinstance(num_condition_classes, int) or isinstance(num_condition_classes, bool):
            raise TypeError(f"num_condition_classes must be an int, got {type(num_condition_classes).__name__}")
        if num_condition_classes < 0:
            raise ValueError(f"num_condition_classes must be >= 0, got {num_condition_classes}")
        if embedding_dim % num_heads:
            raise ValueError(f"num_heads must divide embedding_dim={embedding_dim}, got {num_heads}")
        self.num_queries = num_queries
        self.positional_values = bool(positional_values)
        self.queries = nn.Embedding(num_queries, embedding_dim)
        self.class_embedding = nn.Embedding(num_carrier_classes, embedding_dim)
        self.condition = nn.Embedding(num_condition_classes, embedding_dim) if num_condition_classes else None
        self.norm_image = nn.LayerNorm(embedding_dim)
        self.attention = nn.MultiheadAttention(embedding_dim, num_heads, batch_first=True)
        self.norm_tokens = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim)
        self._carrier_probability = 0.0

    @property
    def num_carrier_classes(self) -> int:
        return self.class_embedding.num_embeddings

    @property
    def num_condition_classes(self) -> int:
        return self.condition.num_embeddings if self.condition is not None else 0

    def class_condition(self, class_ids: torch.Tensor) -> torch.Tensor:
        """[N] class ids -> [N, D] conditioning embeddings."""
        n = self.num_condition_classes
        if not n:
            raise ValueError("class ids were given, but this PPT has no class conditioning (num_condition_classes=0)")
        if class_ids.numel() and (int(class_ids.min()) < 0 or int(class_ids.max()) >= n):
            raise ValueError(
                f"class ids must be in [0, {n - 1}] (num_condition_classes={n}), "
                f"got [{int(class_ids.min())}, {int(class_ids.max())}]"
            )
        return self.condition(class_ids.long().to(self.condition.weight.device))

    @property
    def carrier_probability(self) -> float:
        """p: the chance, per prompt in training, that a carrier is added to the queries."""
        return self._carrier_probability

    @carrier_probability.setter
    def carrier_probability(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"carrier_probability must be in [0, 1], got {value}")
        self._carrier_probability = float(value)

    def text_carrier(self, class_ids: torch.Tensor) -> torch.Tensor:
        """[N] class ids -> [N, D] learned class embeddings."""
        n = self.num_carrier_classes
        if class_ids.numel() and (int(class_ids.min()) < 0 or int(class_ids.max()) >= n):
            raise ValueError(
                f"carrier class ids must be in [0, {n - 1}] (num_carrier_classes={n}), "
                f"got [{int(class_ids.min())}, {int(class_ids.max())}]"
            )
        return self.class_embedding(class_ids.long())

    def _attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                key_pe: torch.Tensor | None = None) -> torch.Tensor:
        """``self.attention(queries, keys + key_pe, values)`` computed for Q queries without projecting the h x w
        image tokens (see :func:`~segmote_monai.networks.two_way.few_query_attention`)."""
        weight, bias, d = self.attention.in_proj_weight, self.attention.in_proj_bias, queries.shape[-1]
        return few_query_attention(
            queries, keys, values, q_proj=(weight[:d], bias[:d]), k_weight=weight[d: 2 * d],
            v_proj=(weight[2 * d:], bias[2 * d:]), out_proj=self.attention.out_proj,
            num_heads=self.attention.num_heads, key_pe=key_pe,
        )

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, carriers: torch.Tensor | None = None,
        class_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prompt tokens for each row.

        Args:
            image_embeddings: [N, D, h, w], one row per prompt.
            image_pe: [1, D, h, w] dense positional encoding.
            carriers: [N, D] or None; zero rows add nothing.
            class_ids: [N] the class each row asks for (class conditioning), or None.

        Returns:
            [N, Q, D] PPT tokens.
        """
        n = image_embeddings.shape[0]
        image_tokens = self.norm_image(image_embeddings.flatten(2).transpose(1, 2))
        pe = image_pe.flatten(2).transpose(1, 2)
        queries = self.queries.weight.unsqueeze(0).expand(n, -1, -1)
        if carriers is not None:
            queries = queries + carriers.unsqueeze(1).to(queries.dtype)
        if class_ids is not None:
            if tuple(class_ids.shape) != (n,):
                raise ValueError(f"class_ids must be [{n}], got {list(class_ids.shape)}")
            queries = queries + self.class_condition(class_ids).unsqueeze(1).to(queries.dtype)
        if self.positional_values:
            keys = image_tokens + pe
            attended = self._attend(queries, keys, keys)
        else:  # the keys' positional term is scored on the query side, so LN(F) + PE is never materialised
            attended = self._attend(queries, image_tokens, image_tokens, key_pe=pe)
        hidden = queries + attended
        return hidden + self.mlp(self.norm_tokens(hidden))
