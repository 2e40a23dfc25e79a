"""The supported families, as data. Adding a family is one ``ArchSpec`` row plus a test row."""

from __future__ import annotations

from .spec import ArchSpec, register_architecture

BERT = register_architecture(
    ArchSpec(
        name="bert",
        layers="encoder.layer",
        q="attention.self.query",
        k="attention.self.key",
        v="attention.self.value",
        o="attention.output.dense",
        up="intermediate.dense",
        down="output.dense",
        attn="attention.self",
        # RoBERTa, XLM-RoBERTa, ELECTRA and CamemBERT reuse BERT's layer layout.
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
    )
)

DISTILBERT = register_architecture(
    ArchSpec(
        name="distilbert",
        layers="transformer.layer",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        o="attention.out_lin",
        up="ffn.lin1",
        down="ffn.lin2",
        attn="attention",
        attn_head_count_attrs=("n_heads",),
        attn_all_head_size_attrs=(),
        config_layers="n_layers",
        config_heads="n_heads",
        config_ffn="hidden_dim",
        config_hidden="dim",
    )
)

MPNET = register_architecture(
    ArchSpec(
        name="mpnet",
        layers="encoder.layer",
        q="attention.attn.q",
        k="attention.attn.k",
        v="attention.attn.v",
        o="attention.attn.o",
        up="intermediate.dense",
        down="output.dense",
        attn="attention.attn",
        # One relative-position bias [buckets, heads] is computed once in the encoder for all layers
        # and passed to each layer's attention as `position_bias` (3rd positional argument).
        head_bias="encoder.relative_attention_bias",
        head_bias_arg=("position_bias", 2),
    )
)
