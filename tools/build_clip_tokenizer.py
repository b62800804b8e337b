"""Rebuild assets/clip_tokenizer/ from OpenAI's CLIP BPE table.

The table ships, MIT-licensed, inside the open_clip_torch wheel:

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/oc
    cd /tmp/oc && unzip -o open_clip_torch-3.3.0-py3-none-any.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz'
    python tools/build_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz

The vocabulary is built exactly as OpenAI's ``clip/simple_tokenizer.py`` builds it:
the 256 byte-to-unicode characters, the same characters each followed by ``</w>``,
one entry per merge (the first 48,894 merges of the file), then ``<|startoftext|>`` and
``<|endoftext|>``: 49,408 entries, the vocabulary of every SD 1.x text encoder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2  # 48,894: what CLIP keeps of the file
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    text = gzip.open(bpe_gz, "rt", encoding="utf-8").read()
    lines = text.split("\n")
    # line 0 is the header ("bpe_simple_vocab_16e6.txt#version: 0.2"), as in simple_tokenizer.py
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise SystemExit(f"{bpe_gz}: not the CLIP BPE table (expected {N_MERGES} merge lines)")
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    vocab_list += ["".join(m.split(" ")) for m in merges]
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"built {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write(vocab: dict[str, int], merges: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bpe_gz", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    vocab, merges = build(args.bpe_gz)
    write(vocab, merges, args.out)
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
