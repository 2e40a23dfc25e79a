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
        embeddings=(
            "embeddings.word_embeddings",
            "embeddings.position_embeddings",
            "embeddings.token_type_embeddings",
        ),
        embedding_norm="embeddings.LayerNorm",
        embedding_project="embeddings_project",  # ELECTRA when embedding_size != hidden_size
        layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
        # pooler (BERT/RoBERTa base models), RoBERTa/ELECTRA classification heads, QA span heads
        residual_readers=("pooler.dense", "classifier.dense", "qa_outputs"),
        pooled_readers=("classifier",),  # BERT: after the pooler; token classification: the residual
        poolers=("pooler",),
        lm_heads=(
            (
                "cls.predictions.transform.dense",
                "cls.predictions.transform.LayerNorm",
                "cls.predictions.decoder",
            ),
            ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder"),
            ("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head"),
        ),
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
        embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
        embedding_norm="embeddings.LayerNorm",
        layer_norms=("sa_layer_norm", "output_layer_norm"),
        residual_readers=("pre_classifier", "qa_outputs"),
        pooled_readers=("classifier",),  # after pre_classifier (sequence), else the residual (token)
        poolers=("pre_classifier",),
        lm_heads=(("vocab_transform", "vocab_layer_norm", "vocab_projector"),),
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
        embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
        embedding_norm="embeddings.LayerNorm",
        layer_norms=("attention.LayerNorm", "output.LayerNorm"),
        residual_readers=("pooler.dense", "classifier.dense", "qa_outputs"),
        pooled_readers=("classifier",),
        poolers=("pooler",),
        lm_heads=(("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder"),),
    )
)

MODERNBERT = register_architecture(
    ArchSpec(
        name="modernbert",
        layers="layers",
        q="attn.Wqkv",  # q, k and v are the three blocks of one fused Linear
        k="attn.Wqkv",
        v="attn.Wqkv",
        o="attn.Wo",
        up="mlp.Wi",
        down="mlp.Wo",
        up_blocks=2,  # GLU: Wi outputs the input and gate halves
        attn="attn",
        attn_head_count_attrs=(),  # the forward reshapes with -1 heads
        attn_head_size_attr="head_dim",
        attn_all_head_size_attrs=(),
        pre_norm=True,
        first_layer_identity=(("attn_norm", "mlp_norm"),),
        config_per_layer=("layer_types",),  # global or sliding-window attention, per layer
        sliding_window=True,
        embeddings=("embeddings.tok_embeddings",),
        embedding_norm="embeddings.norm",
        layer_norms=("attn_norm", "mlp_norm"),
        hidden_norms=("final_norm",),
        # Every task head starts with the prediction head (dense -> act -> norm) in the residual space;
        # the classifier (sequence, token, QA, multiple choice) or the tied decoder reads its output.
        residual_readers=("classifier",),
        lm_heads=(("head.dense", "head.norm", "decoder"),),
    )
)

DEBERTA_V2 = register_architecture(
    ArchSpec(
        name="deberta-v2",  # DeBERTa-v3 checkpoints are deberta-v2 models
        layers="encoder.layer",
        q="attention.self.query_proj",
        k="attention.self.key_proj",
        v="attention.self.value_proj",
        o="attention.output.dense",
        up="intermediate.dense",
        down="output.dense",
        attn="attention.self",
        # Disentangled attention: every layer projects the shared relative-position table per head, by
        # q/k (share_att_key) or by its own position projections.
        head_projections=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
        rel_table="encoder.rel_embeddings",
        attn_rel_terms_attr="pos_att_type",
        # The embedding LayerNorm comes after the projection (embedding_size != hidden_size): always in the
        # hidden space. The table's LayerNorm exists with norm_rel_ebd="layer_norm".
        hidden_norms=("embeddings.LayerNorm", "encoder.LayerNorm"),
        after_first_layer=("encoder.conv",),  # DeBERTa-v2 xlarge/xxlarge (conv_kernel_size > 0)
        embeddings=(
            "embeddings.word_embeddings",
            "embeddings.position_embeddings",
            "embeddings.token_type_embeddings",
        ),
        embedding_project="embeddings.embed_proj",  # when embedding_size != hidden_size
        layer_norms=("attention.output.LayerNorm", "output.LayerNorm"),
        residual_readers=("pooler.dense", "qa_outputs"),
        pooled_readers=("classifier",),
        poolers=("pooler",),
        lm_heads=(
            (
                "cls.predictions.transform.dense",
                "cls.predictions.transform.LayerNorm",
                "cls.predictions.decoder",
            ),  # legacy=True (the default)
            ("lm_predictions.lm_head.dense", "lm_predictions.lm_head.LayerNorm", ""),  # tied by matmul
        ),
        vocab_params=("lm_predictions.lm_head.bias",),  # legacy=False: its bias over the vocabulary
    )
)
