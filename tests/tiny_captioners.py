"""Tiny captioning models built in code: a WD14-style ONNX tagger whose scores follow the
image's mean colour (so the right tags can be worked out by hand), and a random BLIP folder.

The tagger's six tags, as logits of the mean B, G, R (0..255) of the padded square image:
    red_hair      general    (R - G) / 8
    blue_sky      general    (B - R) / 8
    ^_^           general    3            (p = 0.953: a kaomoji keeps its underscore)
    hatsune_miku  character  (G - R) / 8
    general       rating     5            (ratings are never written)
    1girl         general    0            (p = 0.5)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

TAGS = [("red_hair", 0), ("blue_sky", 0), ("^_^", 0), ("hatsune_miku", 4), ("general", 9),
        ("1girl", 0)]


def make_tagger(folder: Path, side: int = 32, slow_convs: int = 0) -> Path:
    """model.onnx and selected_tags.csv in `folder`; the .onnx path. `slow_convs` 32-channel
    3x3 convolutions (at side 256, ~3 ms each here) whose result is added times zero: a model
    that takes long enough to be cancelled halfway."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weights = np.zeros((3, len(TAGS)), np.float32)  # rows: B, G, R
    weights[2, 0], weights[1, 0] = 1 / 8, -1 / 8
    weights[0, 1], weights[2, 1] = 1 / 8, -1 / 8
    weights[1, 3], weights[2, 3] = 1 / 8, -1 / 8
    bias = np.array([0, 0, 3, 0, 5, 0], np.float32)
    nodes = [helper.make_node("ReduceMean", ["input_1", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "weights"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], ["logits"])]
    initializers = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                    numpy_helper.from_array(weights, "weights"),
                    numpy_helper.from_array(bias, "bias")]
    if slow_convs:
        rng = np.random.default_rng(0)
        nodes.append(helper.make_node("Transpose", ["input_1"], ["nchw"], perm=[0, 3, 1, 2]))
        previous = "nchw"
        for index in range(slow_convs):
            channels_in = 3 if index == 0 else 32
            name = f"conv{index}"
            initializers.append(numpy_helper.from_array(
                rng.standard_normal((32, channels_in, 3, 3)).astype(np.float32) * 1e-3, name))
            nodes.append(helper.make_node("Conv", [previous, name], [f"{name}_out"],
                                          pads=[1, 1, 1, 1]))
            previous = f"{name}_out"
        initializers.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
        nodes += [helper.make_node("ReduceMean", [previous], ["work"], keepdims=0),
                  helper.make_node("Mul", ["work", "zero"], ["nothing"]),
                  helper.make_node("Add", ["logits", "nothing"], ["logits_after"])]
        nodes.append(helper.make_node("Sigmoid", ["logits_after"], ["predictions_sigmoid"]))
    else:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]))
    graph = helper.make_graph(
        nodes, "tiny_wd14",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT,
                                       ["batch", len(TAGS)])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    onnx.save(model, path)
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category) in enumerate(TAGS):
            writer.writerow([1000 + index, name, category, 100 - index])
    return path


BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(
    "a an the cat dog red blue photo of on sofa grass sitting green square".split())]


def make_blip(folder: Path, seed: int = 0) -> Path:
    """A random BLIP captioner folder (config, weights, processor, tokenizer)."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(BLIP_WORDS)})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    torch.manual_seed(seed)
    config = BlipConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(BLIP_WORDS), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=2, sep_token_id=3, pad_token_id=0, eos_token_id=3),
        projection_dim=16)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_git(folder: Path, seed: int = 0) -> Path:
    """A random GIT captioner folder (a CLIP-style vision tower and a BERT-style decoder)."""
    import torch
    from transformers import (BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM,
                              GitProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(BLIP_WORDS)})
    processor = GitProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer)
    torch.manual_seed(seed)
    config = GitConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        vocab_size=len(BLIP_WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
        pad_token_id=0)
    GitForCausalLM(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
