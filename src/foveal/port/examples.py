"""Small random Hugging Face models of every ported task, built locally from a config (nothing
is downloaded), with the tokenizers the text-conditioned ones need: the models ``foveal demo
--task`` ports and trains, and the tests' fixtures.

Each builder writes a ``save_pretrained`` folder (weights, config and, for CLIP and Grounding
DINO, a tiny tokenizer) and returns it. The tokenizers are real ``transformers`` tokenizers over a
few words: CLIP's BPE over single letters, and a BERT WordPiece vocabulary whose special tokens
sit at BERT's ids ([PAD] 0, [CLS] 101, [SEP] 102, '.' 1012, '?' 1029), the ids Grounding DINO
finds its phrases by.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LABELS: dict[str, Any] = {"num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}, "label2id": {"a": 0, "b": 1, "c": 2}}
_RESNET = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
           "layer_type": "basic", "out_features": ["stage2"]}  # fmt: skip
_DETR = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
         "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 10}  # fmt: skip
SHAPE_WORDS = ["a", "photo", "of", "circle", "square", "triangle", "star", "cross", "ring", "ellipse", "hexagon",
               "pentagon", "crescent", "arrow", "semicircle"]  # fmt: skip

# name -> (config class, model class, config kwargs, whether class labels apply)
TASK_MODELS: dict[str, tuple[str, str, dict[str, Any], bool]] = {
    "detr": ("DetrConfig", "DetrForObjectDetection",
             {**_DETR, "use_timm_backbone": False, "use_pretrained_backbone": False, "backbone_config": _RESNET},
             True),
    "segformer": ("SegformerConfig", "SegformerForSemanticSegmentation",
                  {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1], "hidden_sizes": [8, 16],
                   "num_attention_heads": [1, 2], "patch_sizes": [7, 3], "strides": [4, 2], "mlp_ratios": [2, 2],
                   "decoder_hidden_size": 16, "image_size": 64}, True),
    "dpt": ("DPTConfig", "DPTForDepthEstimation",
            {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 32,
             "image_size": 64, "patch_size": 8, "backbone_out_indices": [0, 1, 2, 3],
             "neck_hidden_sizes": [8, 8, 16, 16], "fusion_hidden_size": 16, "head_in_index": -1}, False),
    "mask2former": ("Mask2FormerConfig", "Mask2FormerForUniversalSegmentation",
                    {"backbone_config": {**_RESNET, "hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1],
                                         "out_features": ["stage1", "stage2", "stage3", "stage4"]},
                     "use_timm_backbone": False, "use_pretrained_backbone": False, "hidden_dim": 32,
                     "feature_size": 32, "mask_feature_size": 32, "encoder_feedforward_dim": 32,
                     "dim_feedforward": 32, "decoder_layers": 2, "encoder_layers": 1, "num_attention_heads": 2,
                     "num_queries": 10, "train_num_points": 256}, True),
}  # fmt: skip


def save_task_model(name: str, folder: Path, seed: int = 0) -> Path:
    """Build ``TASK_MODELS[name]`` (random weights, ``seed``) and save it into ``folder``."""
    import torch
    import transformers

    config_cls, model_cls, kwargs, labeled = TASK_MODELS[name]
    config = getattr(transformers, config_cls)(**kwargs, **(LABELS if labeled else {}))
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    if name == "dpt":  # conv -> ReLU ends the head: positive last weights keep the depth off 0 at the start
        with torch.no_grad():
            for conv in (model.head.head[2], model.head.head[4]):
                conv.weight.abs_()
                conv.bias.fill_(0.5)
    model.save_pretrained(folder)
    return folder


def write_clip_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer over single letters (no merges); end-of-text has the largest id."""
    import transformers

    letters = list("abcdefghijklmnopqrstuvwxyz.")
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    return folder


def save_clip(folder: Path, seed: int = 0, tokenizer: bool = True) -> Path:
    """A small random CLIPModel (32 px images, 56-token vocabulary) with its tokenizer."""
    import torch
    import transformers

    text = {"vocab_size": 56, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
            "num_attention_heads": 4, "max_position_embeddings": 32, "eos_token_id": 55, "bos_token_id": 54,
            "pad_token_id": 55}  # fmt: skip
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
              "num_hidden_layers": 2, "num_attention_heads": 4}  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision)).eval()
    model.save_pretrained(folder)
    if tokenizer:
        write_clip_tokenizer(folder)
    return folder


def write_bert_vocab(folder: Path, words: list[str]) -> Path:
    """A BERT WordPiece tokenizer with ``words`` and BERT's special-token ids (module docstring)."""
    import transformers

    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    vocab += [f"[filler{i}]" for i in range(1012 - len(vocab))] + ["."]
    vocab += [f"[filler_b{i}]" for i in range(1029 - len(vocab))] + ["?"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def save_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """A small random GroundingDinoForObjectDetection (ResNet image backbone, one-layer BERT text
    encoder) with its tokenizer (the synthetic shapes' names are words of it)."""
    import torch
    import transformers

    backbone = {**_RESNET, "hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1],
                "out_features": ["stage2", "stage3", "stage4"]}  # fmt: skip
    text = {"model_type": "bert", "vocab_size": 1030, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64}  # fmt: skip
    kwargs: dict[str, Any] = {
        "backbone_config": backbone, "use_timm_backbone": False, "use_pretrained_backbone": False,
        "text_config": text, "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 10,
        "max_text_len": 16, "num_feature_levels": 3, "encoder_n_points": 2, "decoder_n_points": 2,
    }  # fmt: skip
    config = transformers.GroundingDinoConfig(**kwargs)
    torch.manual_seed(seed)
    transformers.GroundingDinoForObjectDetection(config).eval().save_pretrained(folder)
    write_bert_vocab(folder, SHAPE_WORDS)
    return folder
